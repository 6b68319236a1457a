"""The compact Llama against transformers' LlamaForCausalLM on the same weights (float32, CPU)."""
import pytest
import torch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as HFLlama

from eagle.config import ConfigError, ModelArgs, RopeConfig, TreeConfig
from eagle.llama import causal_mask, tree_attention_mask
from eagle.presets import build_random
from eagle.tree.masks import build_tree_buffers


@pytest.fixture(scope="module")
def pair():
    base, _ = build_random("tiny", torch.float32, torch.device("cpu"), seed=3)
    cfg = LlamaConfig(**base.args.to_hf_dict(), attn_implementation="eager")
    hf = HFLlama(cfg).eval()
    hf.load_state_dict(base.state_dict(), strict=True)
    return base, hf


def test_logits_match_transformers(pair):
    base, hf = pair
    ids = torch.randint(0, base.args.vocab_size, (1, 50), generator=torch.Generator().manual_seed(0))
    base.setup_cache(64)
    with torch.no_grad():
        ours = base(ids, torch.arange(50), 0, causal_mask(0, 50, ids.device)).logits
        ref = hf(ids).logits
    assert (ours - ref).abs().max().item() <= 1e-4


def test_aux_hidden_are_inputs_of_layers_2_mid_and_l_minus_3(pair):
    base, hf = pair
    ids = torch.randint(0, base.args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    base.setup_cache(16)
    with torch.no_grad():
        aux = base(ids, torch.arange(12), 0, causal_mask(0, 12, ids.device)).aux_hidden
        states = hf(ids, output_hidden_states=True).hidden_states  # [i] = input of layer i
    n = base.args.num_hidden_layers
    ref = torch.cat([states[2], states[n // 2], states[n - 3]], dim=-1)
    assert aux.shape[-1] == 3 * base.args.hidden_size
    assert (aux - ref).abs().max().item() <= 1e-4


def test_cached_decoding_and_tree_verify_match_full_forward(pair):
    """Prefill then a 'tree' that is a chain gives the logits of one full causal forward."""
    base, hf = pair
    ids = torch.randint(0, base.args.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    base.setup_cache(64)
    parents = torch.arange(8)  # a chain of 8 drafted nodes below the root (9 tokens): node i+1's parent is node i
    buffers = build_tree_buffers(parents, max_depth=8)
    with torch.no_grad():
        base(ids[:, :21], torch.arange(21), 0, causal_mask(0, 21, ids.device))
        chain = base(ids[:, 21:], 21 + buffers.position_ids, 21,
                     tree_attention_mask(21, buffers.mask)).logits
        ref = hf(ids).logits[:, 21:]
    assert (chain - ref).abs().max().item() <= 1e-4


def test_llama3_rope_scaling_matches_transformers():
    args = ModelArgs(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=7,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=131072,
                     rope=RopeConfig(500000.0, {"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8192}))
    from eagle.llama import rope_inv_freq
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(**args.to_hf_dict())
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    assert torch.allclose(rope_inv_freq(args.rope, args.head_dim), ref)


def test_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="total_token"):
        TreeConfig(total_token=1000, depth=2, top_k=3)
    with pytest.raises(ConfigError, match="rope_scaling"):
        RopeConfig(scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ConfigError, match="lacks low_freq_factor"):
        RopeConfig(scaling={"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192})
    with pytest.raises(ConfigError, match="at least 3 layers"):
        from eagle.llama import LlamaForCausalLM
        LlamaForCausalLM(ModelArgs(vocab_size=8, hidden_size=8, intermediate_size=8,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ConfigError, match="lacks hidden_size"):
        ModelArgs.from_hf_dict({"vocab_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                                "num_attention_heads": 1})


def test_preset_base_weights_do_not_depend_on_the_head(pair):
    base, _ = pair
    alone, head = build_random("tiny", torch.float32, torch.device("cpu"), seed=3, draft=False)
    assert head is None
    ours, theirs = base.state_dict(), alone.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_rotary_tables_hold_forward_rows_and_stay_allocated():
    """The fused rotary's tables give what `Rotary.forward` gives per position, and a longer
    table leaves the shorter one in place (captured graphs may read it)."""
    from eagle.config import RopeConfig
    from eagle.llama import Rotary

    rotary = Rotary(RopeConfig(theta=500000.0, scaling=None), 16)
    short = rotary.table(8, torch.float16, torch.device("cpu"))
    positions = torch.tensor([0, 5, 7])
    want = rotary(positions, torch.float16)
    assert all(torch.equal(t[positions], w) for t, w in zip(short, want))
    assert rotary.table(4, torch.float16, torch.device("cpu"))[0] is short[0]
    longer = rotary.table(32, torch.float16, torch.device("cpu"))
    assert longer[0].shape == (32, 16) and longer[0] is not short[0]
    assert torch.equal(longer[0][:8], short[0]) and rotary._tables[0][0] is short[0]
