"""The fused path (eagle.fused, chosen per model by eagle.backend.Kernels): stacked projection weights stay views of their stack, each Triton
kernel computes what the PyTorch operations it replaces compute, and a model decodes the same
tokens on either path.

The kernels run in Triton's interpreter on CPU tensors where triton is installed and there is no
GPU; the `gpu` tests run them compiled. Without triton the interpreter tests skip (CI's CPU
machine), and the CPU engine never takes the fused path (checked here)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eagle import EaModel, fused
from eagle.backend import Kernels
from eagle.config import TreeConfig
from eagle.draft import level_masks
from eagle.llama import KVCache, RMSNorm, apply_rotary, stack_projections
from eagle.presets import build_random

TREE = TreeConfig(20, 4, 4)


def linears(*outs: int, bias: bool = False) -> tuple:
    torch.manual_seed(0)
    return tuple(nn.Linear(8, n, bias=bias) for n in outs)


def test_stacked_weights_are_views_that_loading_updates():
    q, k, v = linears(6, 2, 2)
    before = [lin.weight.detach().clone() for lin in (q, k, v)]
    stack = fused.stack_weights((q, k, v))
    assert fused.stacked(stack, (q, k, v))
    assert torch.equal(stack, torch.cat(before))
    new = torch.randn(2, 8)
    k.load_state_dict({"weight": new})
    assert torch.equal(stack[6:8], new) and fused.stacked(stack, (q, k, v))


def test_a_cast_or_reassigned_weight_unlinks_the_stack():
    q, k, v = linears(6, 2, 2)
    stack = fused.stack_weights((q, k, v))
    v.weight = nn.Parameter(torch.zeros(2, 8))
    assert not fused.stacked(stack, (q, k, v))
    stack = fused.stack_weights((q, k, v))
    q.double()
    assert not fused.stacked(stack, (q, k, v))
    assert not fused.stacked(None, (q, k, v))


def test_weights_with_bias_or_mixed_widths_are_not_stacked():
    assert fused.stack_weights(linears(4, 4, bias=True)) is None
    torch.manual_seed(0)
    assert fused.stack_weights((nn.Linear(8, 4, bias=False), nn.Linear(6, 4, bias=False))) is None


def test_rope_fits_power_of_two_halves():
    assert [d for d in (16, 64, 80, 96, 128, 256, 7) if fused.rope_fits(d)] == [16, 64, 128, 256]


def test_attention_kernel_takes_heads_of_16_or_more(monkeypatch):
    """The fused attention's matrix products need a head of at least 16; smaller heads keep
    the fused rotary and use SDPA, as a pinned backend does for every head."""
    from eagle.config import ModelArgs
    from eagle.llama import Attention

    monkeypatch.setattr(Kernels, "active", lambda self, device: True)
    cuda = torch.device("cuda")
    for head_dim, kernel in ((8, False), (16, True)):
        args = ModelArgs(hidden_size=4 * head_dim, intermediate_size=8, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=32)
        attn = Attention(args, args.hidden_size)
        assert attn.fused_rope(cuda) and attn.fused_attention(cuda) == kernel
        Kernels(attention="efficient").install(attn)  # a pinned SDPA backend
        assert not attn.fused_attention(cuda)


def test_cpu_models_take_the_torch_path():
    cpu = torch.device("cpu")
    assert not Kernels().active(cpu) and Kernels().describe(cpu) == "torch"
    assert Kernels(fused=False).describe(torch.device("cuda")) == "torch"


def test_two_models_hold_their_own_kernels():
    """Kernels are chosen per model: building a second model with others changes nothing in the
    first (its modules, its attention kernel, its graphs' fingerprint)."""
    pinned, default = Kernels(attention="math"), Kernels()
    models = [EaModel(*build_random("tiny", torch.float32, torch.device("cpu"), seed=0), TREE,
                      max_length=256, kernels=kernels) for kernels in (pinned, default)]
    for model, kernels in zip(models, (pinned, default)):
        held = {id(m.kernels) for m in (*model.base.modules(), *model.head.modules())
                if hasattr(m, "kernels")}
        assert held == {id(kernels)} and model.kernels is kernels
    cpu = torch.device("cpu")
    assert [m.kernels.resolve_attention(cpu) for m in models] == ["math", None]
    assert models[0]._fingerprint([], []) != models[1]._fingerprint([], [])
    prompt = torch.tensor([[1, 2, 3, 4]])
    first = models[0].generate(prompt, max_new_tokens=8).new_token_ids
    models[1].generate(prompt, max_new_tokens=8)
    assert models[0].generate(prompt, max_new_tokens=8).new_token_ids == first


def test_eagle_blas_keeps_torch_default_off_the_fused_path(monkeypatch):
    before = torch.backends.cuda.preferred_blas_library()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(Kernels, "active", lambda self, device: True)  # a CPU tensor never asks
    kernels = Kernels()
    assert kernels.eagle_blas_name(cpu) is None and kernels.eagle_blas_name(cuda) == "cublaslt"
    with kernels.blas_context(cpu):
        assert torch.backends.cuda.preferred_blas_library() == before
    monkeypatch.setattr(torch.version, "hip", "6.4")  # a ROCm build: not what was measured
    assert kernels.eagle_blas_name(cuda) is None
    monkeypatch.setattr(torch.version, "hip", None)
    default = Kernels(eagle_blas=None)  # torch's default library, for this model only
    assert default.eagle_blas_name(cuda) is None and default.eagle_blas_label(cuda) == "torch default"
    assert kernels.eagle_blas_label(cuda) == "cublaslt"
    monkeypatch.setattr(Kernels, "active", lambda self, device: False)
    assert kernels.eagle_blas_name(cuda) is None


@pytest.mark.gpu
def test_eagle_blas_prefers_cublaslt_inside_and_restores_gpu():
    before = torch.backends.cuda.preferred_blas_library()
    with Kernels().blas_context(torch.device("cuda")):
        assert torch.backends.cuda.preferred_blas_library() == torch._C._BlasBackend.Cublaslt
    assert torch.backends.cuda.preferred_blas_library() == before


def qkv_rows(s: int, h: int, n_kv: int, d: int, dtype) -> tuple:
    """Queries, keys and values as strided column blocks of one [S, (H + 2 Hkv) D] product."""
    qkv = torch.randn(s, (h + 2 * n_kv) * d, dtype=torch.float32).to(dtype)
    return qkv.split([h * d, n_kv * d, n_kv * d], dim=-1)


def cos_sin(s: int, d: int, dtype) -> tuple:
    angles = torch.rand(s, d // 2) * 100
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def sdpa_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """PyTorch's attention in float64 for `fused_triton.attention`'s arguments: [S, H*D]."""
    h, s, d = q.shape
    n_kv, width = k_cache.shape[0], mask.shape[1]
    rep = h // n_kv
    keys, values = (t[:, :width].double().repeat_interleave(rep, 0) for t in (k_cache, v_cache))
    out = F.scaled_dot_product_attention(q.double(), keys, values, attn_mask=mask.expand(h, s, -1))
    return out.transpose(0, 1).reshape(s, h * d)


def check_attention(ops, device: str, dtype) -> None:
    """The fused attention against SDPA: one query or many, windows cut into chunks or not, a
    row of a chunk that sees nothing, and whole chunks nobody sees; told the new tokens' first
    slot (a host int or a device tensor), the same bits without reading the tiles past them."""
    torch.manual_seed(2)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    h, n_kv, d, slots = 8, 2, 32, 1100
    k_cache, v_cache = (torch.randn(n_kv, slots, d, device=device).to(dtype) for _ in range(2))
    for s, width, seen in ((1, 1024, 300), (7, 256, 130), (61, 512, 200), (40, 1100, 1000)):
        q = torch.randn(h, s, d, device=device).to(dtype)
        cols = torch.arange(width, device=device)
        tree = torch.rand(s, width, device=device) < 0.5
        mask = (cols < seen)[None, :] | (tree & (cols < seen + s)[None, :])
        mask[:, 0] = True
        got = ops.attention(q, k_cache, v_cache, mask)
        assert got.shape == (s, h * d) and got.dtype == dtype
        torch.testing.assert_close(got.double(), sdpa_reference(q, k_cache, v_cache, mask),
                                   atol=tol, rtol=tol)
        assert torch.equal(got, ops.attention(q, k_cache, v_cache, mask))  # reproduces itself
        for start in (seen, torch.tensor(seen, device=device)):  # no row sees slot seen + s on
            assert torch.equal(got, ops.attention(q, k_cache, v_cache, mask, start))  # skips them
    blind = torch.zeros(1, 256, dtype=torch.bool, device=device)
    assert not ops.attention(q[:, :1], k_cache, v_cache, blind).any()  # sees nothing: zeros


def check_top_log_probs(ops, device: str, dtype) -> None:
    """The fused top-k of log-softmax against PyTorch's, over vocabularies cut into several
    blocks or one, with the lower id first among equal values."""
    torch.manual_seed(3)
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for shape, k in (((10, 5000), 10), ((300,), 4)):
        logits = (torch.randn(*shape, device=device) * 4).to(dtype)
        values, ids = ops.top_log_probs(logits, k)
        want = torch.log_softmax(logits.float(), dim=-1)
        assert values.dtype == torch.float32 and ids.shape == (*shape[:-1], k)
        torch.testing.assert_close(values, want.gather(-1, ids), atol=tol, rtol=tol)
        assert torch.equal(want.gather(-1, ids), want.topk(k).values)  # the k best ids
        assert (values[..., :-1] >= values[..., 1:]).all()
    tied = torch.zeros(1, 4100, device=device).to(dtype)
    tied[0, [4099, 7, 2050]] = 1.0
    assert ops.top_log_probs(tied, 4)[1].tolist() == [[7, 2050, 4099, 0]]
    few = torch.full((1, 4100), float("-inf"), device=device).to(dtype)  # 2 finite entries, k = 4
    few[0, [2049, 5]] = 0.0
    assert ops.top_log_probs(few, 4)[1].tolist() == [[5, 2049, 0, 1]]  # no id twice


def check_draft_level_mask(ops, device: str) -> None:
    """The fused level masks against the PyTorch ones, level after level of a drafted tree, with
    windows of one block and of several."""
    gen = torch.Generator().manual_seed(4)
    for k, width, ctx in ((4, 64, 9), (4, 2500, 1300), (10, 128, 0), (10, 128, 110), (3, 40, 40)):
        ctx = torch.tensor(ctx, device=device)  # the last two: levels past the window's end
        got = want = rows = None  # the ancestor rows of the level before
        for _ in range(3):
            want, want_mask = level_masks(want, rows, ctx, k, width, Kernels(fused=False))
            got, got_mask = ops.draft_level_mask(got, rows, ctx, k, width)
            assert torch.equal(got, want) and torch.equal(got_mask, want_mask)
            rows = torch.randint(0, k, (k,), generator=gen).to(device)


def check_kernels(ops, device: str, dtype) -> None:
    """Each kernel against the PyTorch operations it replaces, on `device`."""
    torch.manual_seed(1)
    s, h, n_kv, d, slots = 5, 6, 2, 16, 24
    q, k, v = (t.to(device) for t in qkv_rows(s, h, n_kv, d, dtype))
    table = [t.to(device) for t in cos_sin(40, d, dtype)]
    positions = torch.tensor([7, 0, 39, 12, 12], device=device)
    cos, sin = (t[positions] for t in table)
    for start in (3, torch.tensor(11, device=device)):
        got, want = (KVCache(1, n_kv, d, slots, dtype, torch.device(device)) for _ in range(2))
        q_rot = ops.rope_into_cache(q, k, v, positions, *table, got.data[0, 0], got.data[0, 1],
                                    start)
        heads = lambda t, n: t.reshape(1, s, n, d).transpose(1, 2)  # noqa: E731
        want.write(0, start, apply_rotary(heads(k, n_kv), cos, sin), heads(v, n_kv), slots)
        assert torch.equal(q_rot, apply_rotary(heads(q, h), cos, sin)[0])  # bit for bit
        assert torch.equal(got.data, want.data)

    norm = RMSNorm(96, 1e-5).to(device=device, dtype=dtype)
    nn.init.normal_(norm.weight)
    x, delta = (torch.randn(1, 4, 96, device=device).to(dtype) for _ in range(2))
    total, normed = ops.rms_norm(x, norm.weight, 1e-5, delta)
    assert torch.equal(total, x + delta)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(normed, norm(x + delta), atol=tol, rtol=tol)
    torch.testing.assert_close(ops.rms_norm(x[:, -1:], norm.weight, 1e-5)[1], norm(x[:, -1:]),
                               atol=tol, rtol=tol)
    wide = torch.full((1, 4, 3 * 96), 7.0, device=device).to(dtype)  # normed rows into a middle third
    ops.rms_norm(x, norm.weight, 1e-5, out=wide[..., 96:192])
    assert torch.equal(wide[..., 96:192], ops.rms_norm(x, norm.weight, 1e-5)[1])
    assert (wide[..., :96] == 7).all() and (wide[..., 192:] == 7).all()
    for bad in (wide[..., :95], wide[..., ::3]):  # another shape; elements apart within a row
        with pytest.raises(ValueError, match="out must"):
            ops.rms_norm(x, norm.weight, 1e-5, out=bad)

    gate, up = torch.randn(3, 2 * 1500, device=device).to(dtype).split(1500, dim=-1)
    torch.testing.assert_close(ops.silu_mul(gate, up), F.silu(gate) * up, atol=tol, rtol=tol)
    check_attention(ops, device, dtype)
    check_top_log_probs(ops, device, dtype)
    check_draft_level_mask(ops, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_match_torch_interpreted(triton_interpreter, dtype):
    check_kernels(fused.ops(), "cpu", dtype)


def decode(model: EaModel, prompt: torch.Tensor, new: int) -> tuple:
    """Plain decoding's tokens, EAGLE's, and EAGLE's accepted drafts per step (the draft's own
    forwards: its attention, top-k and level masks)."""
    eagle = model.generate(prompt, max_new_tokens=new)
    return (model.naive_generate(prompt, max_new_tokens=new).new_token_ids, eagle.new_token_ids,
            eagle.accepted_drafts)


@pytest.mark.slow
def test_fused_engine_decodes_the_torch_tokens_interpreted(triton_interpreter, monkeypatch):
    """The whole fused forward (stacked products, fused norms, rotary into the cache) run on CPU
    in the interpreter decodes what the PyTorch path decodes, baseline and EAGLE, in float32."""
    base, head = build_random("tiny", torch.float32, torch.device("cpu"), seed=0)
    prompt = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    want = decode(EaModel(base, head, TREE, max_length=128), prompt, 12)
    monkeypatch.setattr(Kernels, "active", lambda self, device: True)
    model = EaModel(base, head, TREE, max_length=128)
    assert all(m.qkv is not None for m in model.modules() if hasattr(m, "qkv"))
    assert decode(model, prompt, 12) == want


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_match_torch_gpu(dtype):
    check_kernels(fused.ops(), "cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["tiny", "llama3.1-8b"])
def test_fused_path_decodes_the_torch_tokens_gpu_fp32(preset):
    """float32 on the GPU, graphs on: the fused path (the CUDA default) decodes what PyTorch's
    separate kernels decode, for the baseline and EAGLE."""
    base, head = build_random(preset, torch.float32, torch.device("cuda"), seed=0)
    prompt = torch.randint(3, base.args.vocab_size, (1, 64),
                           generator=torch.Generator().manual_seed(0)).cuda()
    model = EaModel(base, head, TreeConfig(60, 5, 10), max_length=512)
    got = decode(model, prompt, 48)
    torch_ops = EaModel(base, head, TreeConfig(60, 5, 10), max_length=512,
                        kernels=Kernels(fused=False))
    assert torch_ops.kernels.describe(torch_ops.device) == "torch"
    assert decode(torch_ops, prompt, 48) == got


def test_stack_projections_reaches_base_and_head():
    base, head = build_random("tiny", torch.float32, torch.device("cpu"), seed=0)
    for model in (base, head):
        stack_projections(model)
        stacks = [(m.qkv, (m.q_proj, m.k_proj, m.v_proj)) for m in model.modules()
                  if hasattr(m, "qkv")] + [(m.gate_up, (m.gate_proj, m.up_proj))
                                           for m in model.modules() if hasattr(m, "gate_up")]
        assert stacks and all(fused.stacked(*pair) for pair in stacks)


def test_weights_stacked_under_inference_mode_stay_ordinary_tensors():
    """A model set up inside `torch.inference_mode()` keeps weights that can still become
    Parameters elsewhere (transformers' loader does, for the benchmark's peer)."""
    q, k, v = linears(6, 2, 2)
    with torch.inference_mode():
        fused.stack_weights((q, k, v))
    assert not any(lin.weight.is_inference() for lin in (q, k, v))
    nn.Parameter(q.weight.detach(), requires_grad=True)
