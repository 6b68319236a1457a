"""The decode loop's logic with a base whose next token is a fixed rule and a scripted drafter.

No trained weights and no checkpoint: what is checked here does not depend on them (stopping,
the token budget, which draft tokens a step accepts, what the next step receives), and every
expected value follows from the rule alone.

- The base is the engine's own `LlamaForCausalLM` (the loop calls its forward, its cache and its
  compaction, so it is not replaced) with weights set by hand: every attention and MLP weight
  zero, so each layer adds nothing and the hidden state stays the token's one-hot embedding; the
  lm_head maps that one-hot to `successor`. Its logits are one-hot at the rule's next token, so
  greedy decoding and sampling (a draw from a point mass) both follow the rule.
- The drafter replaces `eagle.draft.Drafter` (the only object the loop asks for trees): it drafts
  the rule's chain from the step's root, right for its first `right` levels and wrong after,
  among branches that are always wrong.
- The tokenizer is bytes, with byte 0 as its end-of-sequence token (the model's config names no
  stop id, so the stop must come from the tokenizer).
"""
from __future__ import annotations

from typing import Optional

import pytest
import torch

from eagle import EaModel
from eagle.config import ModelArgs, TreeConfig
from eagle.llama import LlamaForCausalLM
from eagle.tree.select import DraftTree

EOS, NEVER = 0, ord("#")  # NEVER: a byte the rule never produces, for the wrong branches
VOCAB = 256
TREE = TreeConfig(total_token=10, depth=3, top_k=4)  # 9 nodes, chains up to 4 deep
DEEP = TREE.max_depth


def successor(token: int) -> int:
    """a -> b ... y -> z -> "." -> end of sequence; anything else -> a."""
    if ord("a") <= token < ord("z"):
        return token + 1
    return {ord("z"): ord("."), ord("."): EOS}.get(token, ord("a"))


def rule_chain(last: int, n: int) -> list[int]:
    out = []
    for _ in range(n):
        last = successor(last)
        out.append(last)
    return out


class ByteTokenizer:
    eos_token, unk_token_id = "<eos>", None

    def convert_tokens_to_ids(self, token: str) -> Optional[int]:
        return EOS if token == self.eos_token else None

    @staticmethod
    def encode(text: str) -> torch.Tensor:
        return torch.tensor([list(text.encode())])


@torch.no_grad()
def rule_base() -> LlamaForCausalLM:
    args = ModelArgs(vocab_size=VOCAB, hidden_size=VOCAB, intermediate_size=8, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    base = LlamaForCausalLM(args)
    for name, p in base.named_parameters():
        p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
    base.model.embed_tokens.weight.copy_(torch.eye(VOCAB))
    for token in range(VOCAB):
        base.lm_head.weight[successor(token), token] = 50.0  # normed one-hot: 16 -> logit 800
    return base.eval()


class ScriptedDrafter:
    """Drafts `successor`'s chain from each step's root: right for `right` levels, then NEVER;
    the chain is the last child of the root when not `chain_first`. Records what it is given."""

    def __init__(self, right: int, chain_first: bool = True):
        self.right, self.chain_first = right, chain_first
        self.n_ctx = torch.zeros((), dtype=torch.long)
        self.prefilled: list[int] = []
        self.inputs: list[tuple[list[int], list[int]]] = []  # (tokens at the features, tokens)

    def reset(self) -> None:
        self.n_ctx.zero_()
        self.prefilled, self.inputs = [], []

    def prefill(self, features: torch.Tensor, tokens: torch.Tensor) -> None:
        self.prefilled = tokens.tolist()
        self.n_ctx.fill_(tokens.shape[0])

    def step(self, features, tokens, section=None, count=None, window=None) -> DraftTree:
        m = tokens.shape[0] if count is None else int(count)
        at_features = features[0, :m, :VOCAB].argmax(-1).tolist()  # the one-hot of each node
        self.inputs.append((at_features, tokens[:m].tolist()))
        self.n_ctx += m
        root = int(tokens[m - 1])
        chain = rule_chain(root, self.right) + [NEVER] * (DEEP - self.right)
        junk = TREE.num_nodes - DEEP
        if self.chain_first:  # chain 1..DEEP, junk children of the chain's first nodes
            parents = list(range(DEEP)) + [i % DEEP for i in range(junk)]
            nodes = chain + [NEVER] * junk
        else:  # junk children of the root first, the chain last
            parents = [0] * junk + [0] + list(range(junk + 1, junk + DEEP))
            nodes = [NEVER] * junk + chain
        return DraftTree(torch.tensor([root] + nodes), torch.tensor(parents))


def engine(right: int = DEEP, chain_first: bool = True, mask_impl: str = "rebuild") -> EaModel:
    ea = EaModel(rule_base(), None, TREE, mask_impl, ByteTokenizer(), max_length=256,
                 cuda_graph=False)
    ea.drafter = ScriptedDrafter(right, chain_first)
    return ea


def test_the_rule_base_decodes_its_rule_and_stops_at_the_tokenizers_eos():
    ea = engine()
    assert ea.stop_ids == frozenset({EOS})
    res = ea.naive_generate(ByteTokenizer.encode("say a"), max_new_tokens=100)
    assert res.new_token_ids == rule_chain(ord("a"), 27)  # b..z, ".", eos
    assert res.new_token_ids[-1] == EOS and res.steps == 26


@pytest.mark.parametrize("right", [0, 1, 2, DEEP])
@pytest.mark.parametrize("chain_first", [True, False])
def test_each_step_accepts_exactly_the_drafts_that_agree(right, chain_first):
    ea, n = engine(right, chain_first), 15
    res = ea.generate(ByteTokenizer.encode("a"), max_new_tokens=n)
    steps = -(-(n - 1) // (right + 1))  # the prefill gives one token, each step right + 1
    assert res.new_token_ids == rule_chain(ord("a"), n)
    assert res.accepted_drafts == [right] * steps and res.steps == steps


@pytest.mark.parametrize("mask_impl", ["rebuild", "incremental", "vectorized"])
def test_each_step_drafts_from_the_accepted_path(mask_impl):
    """The drafter's input each step: the features of the root and the accepted nodes, each
    followed by its token (the base's choice there), the last of them the new root."""
    ea = engine(right=2, chain_first=False, mask_impl=mask_impl)
    res = ea.generate(ByteTokenizer.encode("abc"), max_new_tokens=10)
    assert res.new_token_ids == list(b"defghijklm")
    assert ea.drafter.prefilled == list(b"bc")  # the prompt's positions before the last, shifted
    assert ea.drafter.inputs == [(list(b"c"), list(b"d")), (list(b"def"), list(b"efg")),
                                 (list(b"ghi"), list(b"hij"))]


@pytest.mark.parametrize("n", [1, 2, DEEP, DEEP + 1, DEEP + 2, 2 * DEEP + 3])
def test_exact_token_budget_when_every_draft_is_right(n):
    res = engine().generate(ByteTokenizer.encode("a"), max_new_tokens=n)
    assert res.new_token_ids == rule_chain(ord("a"), n)
    assert len(res.output_ids[0]) == 1 + n and res.output_ids[0, 1:].tolist() == res.new_token_ids


@pytest.mark.parametrize("prompt", ["u", "v", "x", "y."])
@pytest.mark.parametrize("right", [0, 2, DEEP])
def test_a_stop_token_ends_the_output_wherever_it_falls(prompt, right):
    """Inside a step's accepted chain, as its bonus token or from the prefill: kept, then nothing."""
    ids = ByteTokenizer.encode(prompt)
    want = rule_chain(ids[0, -1].item(), 100)
    want = want[: want.index(EOS) + 1]
    res = engine(right).generate(ids, max_new_tokens=100)
    assert res.new_token_ids == want
    assert res.new_token_ids == engine(right).naive_generate(ids, max_new_tokens=100).new_token_ids


@pytest.mark.parametrize("right", [0, 1, DEEP])
def test_greedy_eagle_equals_plain_greedy(right):
    ea = engine(right, chain_first=False)
    for prompt in ("hello", "the quick", "q"):
        ids = ByteTokenizer.encode(prompt)
        assert ea.generate(ids, max_new_tokens=12).new_token_ids == \
            ea.naive_generate(ids, max_new_tokens=12).new_token_ids


def test_sampling_from_a_point_mass_accepts_like_greedy():
    ea = engine(right=2, chain_first=False)
    res = ea.generate(ByteTokenizer.encode("a"), temperature=1.0, max_new_tokens=10, seed=3)
    assert res.new_token_ids == rule_chain(ord("a"), 10) and res.accepted_drafts == [2, 2, 2]
