"""The import graph of the engine (`eagle`) and the evaluation package: no circles, counting every
import statement (those inside functions too), and the engine never imports its builders."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("eagle", "evaluation")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules that `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            root = package.split(".")
            root = root[:len(root) - node.level + 1] if node.level else []
            stem = ".".join(root + ([node.module] if node.module else []))
            modules = [f"{stem}.{alias.name}" for alias in node.names]
            targets = [m for m in modules if m in known] or [stem]
        else:
            continue
        found |= {t for t in targets if t in known}
    parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return found - {name} - parents  # a module's packages are imported before it anyway


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    return {name: imported(path, name, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports as a list of modules (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_find_cycle_detects_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_circles():
    graph = import_graph()
    assert {"eagle.ea_model", "evaluation.generate", "evaluation.run_settings"} <= set(graph)
    assert find_cycle(graph) == []


BUILDER_COMMANDS = ("eagle.tiny", "eagle.smollm2")  # the builders' command lines


def test_the_engine_never_imports_its_builders():
    graph = import_graph()
    engine = [m for m in graph if m.startswith("eagle") and not m.startswith("eagle.build")
              and m not in BUILDER_COMMANDS]
    assert [m for m in engine if any(t.startswith("eagle.build") for t in graph[m])] == []


def test_importing_and_running_the_engine_loads_no_builder_module():
    code = ("import sys, torch\n"
            "from eagle import EaModel, TreeConfig\n"
            "from eagle.presets import preset_model\n"
            "model = preset_model('tiny', TreeConfig(8, 3, 2), dtype=torch.float32, device='cpu',"
            " max_length=256)\n"
            "model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)\n"
            "loaded = [m for m in sys.modules if m.startswith('eagle.build')]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
