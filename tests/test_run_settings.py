"""`RunSettings`: the answer file's `settings` object read back, compared and written again."""
from evaluation.run_settings import RunSettings


def recorded(**change) -> dict:
    """A settings dict as a generator writes it (every known key), with `change` applied."""
    values = {key: f"value of {key}" for key in RunSettings.known_keys()}
    values.update({"total_token": 60, "temperature": 0.0, "code": {"fingerprint": "abc"}, **change})
    return values


def test_settings_round_trip_through_the_answer_file_form():
    written = recorded()
    settings = RunSettings.from_dict(written)
    assert settings.to_dict() == written and settings.extra == {}
    assert RunSettings.from_dict(settings.to_dict()) == settings


def test_unknown_keys_are_kept_and_take_part_in_equality():
    newer = recorded(threads=4)
    settings = RunSettings.from_dict(newer)
    assert settings.extra == {"threads": 4} and settings.to_dict() == newer
    assert settings != RunSettings.from_dict(recorded())
    assert settings.differences(RunSettings.from_dict(recorded())) == ["threads"]


def test_differences_name_the_changed_keys_and_read_absent_keys_as_none():
    a = RunSettings.from_dict(recorded())
    b = RunSettings.from_dict(recorded(depth=6, seed=1))
    assert a.differences(b) == ["depth", "seed"] and a.differences(b, frozenset({"seed"})) == ["depth"]
    older = {k: v for k, v in recorded(eagle_blas=None).items() if k != "eagle_blas"}
    assert RunSettings.from_dict(older) == RunSettings.from_dict(recorded(eagle_blas=None))
    assert RunSettings.from_dict(older).get("eagle_blas") is None


def test_resume_keeps_the_files_code_record():
    settings = RunSettings.from_dict(recorded())
    kept = settings.with_code({"fingerprint": "abc", "git_commit": "f" * 40})
    assert kept.code["git_commit"] == "f" * 40 and kept.differences(settings) == ["code"]


def test_settings_of_prints_one_key_of_an_answer_file(tmp_path, capsys):
    import json

    from evaluation.settings_of import main

    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question_id": 1, "settings": recorded(dtype="float32")}) + "\n")
    assert main([str(path), "dtype"]) == 0 and capsys.readouterr().out == "float32\n"
    assert main([str(path), "total_token"]) == 0 and capsys.readouterr().out == "60\n"
    (tmp_path / "empty.jsonl").write_text("")
    assert main([str(tmp_path / "empty.jsonl"), "dtype"]) == 2


def test_sampling_is_read_from_the_temperature_or_the_categories():
    from evaluation.run_settings import samples, temperature_text

    assert not samples(recorded(temperature_by_category=None))
    assert samples(recorded(temperature=0.7))
    by_category = recorded(temperature_by_category={"writing": 0.7})
    assert samples(by_category) and temperature_text(by_category) == "per category: writing 0.7, others 0"
    older = {k: v for k, v in recorded().items() if k != "temperature_by_category"}
    assert RunSettings.from_dict(older).temperature_by_category is None and not samples(older)
