"""Self-speculative decoding with a low-bit copy of the model (`speculative="low_bit_draft"`), on the real default
model: plain decoding's output bit for bit, drafts that are exactly the copy's own greedy continuation (its pools
follow every accepted, rejected and corrected token), and a copy that shares everything but the projections."""

from __future__ import annotations

import pytest
import torch

from tests.engine.conftest import GROUNDED, PROMPTS, engine_over
from xpullm.engine import LLM
from xpullm.engine.draft_model import low_bit_copy, weight_bytes
from xpullm.engine.speculative import LookupLowBitDrafter, LowBitDrafter, SpeculativeConfig
from xpullm.linear import LowBitLinear

# Drafting declared free and no confidence floor: the copy drafts at every step, so rejections happen too; with
# 8-bit pools of its own (the shared-pool default has its own tests below).
ALWAYS = SpeculativeConfig(
    method="low_bit_draft", draft_min_prob=0.0, draft_cost=0.0, draft_kv_cache_dtype="int8"
)


@pytest.fixture(scope="module")
def dense_plain(dense_llm: LLM) -> LLM:
    return engine_over(dense_llm, None)


@pytest.fixture(scope="module")
def dense_draft(dense_llm: LLM) -> LLM:
    return engine_over(dense_llm, ALWAYS)


def test_int4_draft_of_a_dense_model_gives_plain_decodings_output(dense_plain: LLM, dense_draft: LLM) -> None:
    ref = dense_plain.chat(GROUNDED, max_new_tokens=48)
    out = dense_draft.chat(GROUNDED, max_new_tokens=48)
    assert (out.text, out.completion_tokens, out.finish_reason) == (
        ref.text,
        ref.completion_tokens,
        ref.finish_reason,
    )
    # The int4 copy agrees with the fp32 model on most tokens of a copied answer.
    assert out.timings.acceptance_rate > 0.5 and out.timings.tokens_per_step > 2.0, out.timings
    want = [c.text for c in dense_plain.generate(PROMPTS, max_new_tokens=24)]
    got = dense_draft.generate(PROMPTS, max_new_tokens=24)
    assert [c.text for c in got] == want
    assert sum(c.timings.draft_tokens for c in got) > sum(c.timings.accepted_tokens for c in got) > 0
    assert dense_draft.engine.stats().kv_used_blocks == 0


def test_the_copy_shares_all_but_its_projections(dense_llm: LLM, dense_draft: LLM) -> None:
    core = dense_draft.engine
    drafter = core._drafter
    assert isinstance(drafter, LowBitDrafter)
    target, draft = core.runner, drafter.draft
    assert draft.block_tables is target.block_tables  # one allocator: the same blocks per position
    assert draft.k_pool.dtype == torch.int8 and draft.k_pool.shape == target.k_pool.shape  # 8-bit draft pools
    t_layer, d_layer = target.dec.layers[0], draft.dec.layers[0]
    for name in ("qkv", "o_proj", "gate_up", "down"):
        assert getattr(t_layer, name).format_name == "fp32"  # the model stays fp32
        proj = getattr(d_layer, name)
        assert isinstance(proj, LowBitLinear) and proj.format_name == "sym_int4"
    assert d_layer.attn_norm is t_layer.attn_norm and draft.dec.embed is target.dec.embed
    # the head in 8 bits by default (IPEX-LLM's mixed precision: the copy's argmax follows the model's more often)
    assert draft.dec.lm_head.format_name == "sym_int8" and draft.dec.lm_head is not target.dec.lm_head
    # fp32 -> int4 (+ scales), the head int8: about a sixth of the bytes. On CPU the drafter's cost is at least that, and the
    # timed eager steps' ratio where that is higher (a 135M model's CPU step is not all weight streaming).
    ratio = weight_bytes(draft.dec) / weight_bytes(target.dec)
    assert 0.1 < ratio < 0.2 and max(0.1, ratio) <= drafter.cost < 2.0


def test_drafts_are_the_copys_own_greedy_continuation(llm: LLM) -> None:
    """Every proposal equals what the copy predicts from scratch for the sequence as it stands: the incremental
    pools (prompt catch-up, fed drafts, rollback after a rejection, the correction token) hold the right K/V."""
    spec = engine_over(llm, ALWAYS)
    core = spec.engine
    drafter = core._drafter
    seen: list[tuple[list[int], list[int]]] = []
    propose = drafter.propose

    def recording(batch):
        drafts = propose(batch)
        seen.extend((list(s.tokens), d) for s, d in zip(batch, drafts, strict=True) if d)
        return drafts

    drafter.propose = recording
    plain = engine_over(llm, None)
    ref = [plain.chat(GROUNDED, max_new_tokens=40), *plain.generate(PROMPTS, max_new_tokens=24)]
    out = [spec.chat(GROUNDED, max_new_tokens=40), *spec.generate(PROMPTS, max_new_tokens=24)]
    assert [c.text for c in out] == [c.text for c in ref]
    # rejections (and rollbacks) happened: the int4 copy of the packaged int4 model can follow a copied answer to
    # the end (the 40 grounded tokens drafted 20 / 20 on an AVX2 machine), so open prompts run too
    accepted, drafted = (sum(getattr(c.timings, f) for c in out) for f in ("accepted_tokens", "draft_tokens"))
    assert accepted < drafted, [c.timings for c in out]
    assert len(seen) >= 4
    draft = drafter.draft
    slot = core.config.max_seqs - 1  # a free block-table row (the request has finished)
    blocks = core.pool.allocate(-(-max(len(t) + len(d) for t, d in seen) // core.config.block_size))
    try:
        draft.set_table(slot, blocks)
        for tokens, drafts in seen:
            seq = tokens + drafts[:-1]
            n = len(seq)
            logits = draft.forward(seq, list(range(n)), [slot] * n, list(range(len(tokens) - 1, n)))
            assert logits.argmax(-1).tolist() == drafts
    finally:
        core.pool.free(blocks)


def test_bad_draft_settings_name_the_problem(dense_llm: LLM) -> None:
    with pytest.raises(ValueError, match="sym_int4"):
        SpeculativeConfig(method="low_bit_draft", draft_format="int3")
    with pytest.raises(ValueError, match="sym_int8"):
        SpeculativeConfig(method="low_bit_draft", draft_head_format="int7")
    with pytest.raises(ValueError, match="draft_kv_cache_dtype='int2' is not known: choose 'shared'"):
        SpeculativeConfig(method="low_bit_draft", draft_kv_cache_dtype="int2")
    dec = dense_llm.engine.runner.dec
    odd = low_bit_copy(dec, "sym_int8")
    assert odd.layers[0].down.format_name == "sym_int8" and dec.layers[0].down is not odd.layers[0].down
    assert odd.lm_head.format_name == "sym_int8"  # no head format named: the draft's own
    four = low_bit_copy(dec, "sym_int4", 32, head_format="sym_int8")
    assert (four.layers[0].qkv.format_name, four.layers[0].qkv.group_size) == ("sym_int4", 32)
    assert four.lm_head.format_name == "sym_int8" and four.lm_head.group_size != 32


def test_lookup_low_bit_drafts_from_both_and_gives_plain_decodings_output(
    dense_plain: LLM, dense_llm: LLM
) -> None:
    """Prompt lookup drafts where the answer copies its input, the int4 copy where it does not; the output is plain
    decoding's, and the copy's drafts are scored into its own acceptance estimate."""
    spec = SpeculativeConfig(method="lookup_low_bit", draft_min_prob=0.0, draft_cost=0.0)
    hybrid = engine_over(dense_llm, spec)
    drafter = hybrid.engine._drafter
    assert isinstance(drafter, LookupLowBitDrafter)
    sources: dict[str, int] = {"lookup": 0, "copy": 0}
    states = []

    def counting(name: str, propose):
        def run(batch):
            drafts = propose(batch)
            sources[name] += sum(1 for d in drafts if d)
            return drafts

        return run

    drafter.lookup.propose = counting("lookup", drafter.lookup.propose)
    drafter.copy.propose = counting("copy", drafter.copy.propose)
    start = drafter.start
    drafter.start = lambda prompt: states.append(start(prompt)) or states[-1]
    ref = dense_plain.chat(GROUNDED, max_new_tokens=48)
    out = hybrid.chat(GROUNDED, max_new_tokens=48)
    assert (out.text, out.completion_tokens) == (ref.text, ref.completion_tokens)
    want = [c.text for c in dense_plain.generate(PROMPTS, max_new_tokens=24)]
    assert [c.text for c in hybrid.generate(PROMPTS, max_new_tokens=24)] == want
    # Both sources drafted; lookup's proposals came first (the copy only runs where lookup found nothing).
    assert sources["lookup"] > 0 and sources["copy"] > 0, sources
    copy_drafted = sum(st.copy.drafted for st in states)
    assert 0 < sum(st.copy.accepted for st in states) <= copy_drafted
    assert out.timings.tokens_per_step > 1.5, out.timings
    assert hybrid.engine.stats().kv_used_blocks == 0


def test_a_copy_over_the_models_own_pools_drafts_from_the_models_kv(dense_plain: LLM, dense_llm: LLM) -> None:
    """`draft_kv_cache_dtype="shared"`: the copy has no pools of its own and nothing to catch up. Each proposal
    leaves the model's K/V of the sequence (every position before its last token) as it was, and is the copy's
    greedy continuation over it (re-run in one chunk right after); the output is plain decoding's."""
    shared = SpeculativeConfig(
        method="low_bit_draft", draft_min_prob=0.0, draft_cost=0.0
    )  # the default pools
    assert shared.draft_kv_cache_dtype == "shared"
    spec = engine_over(dense_llm, shared)
    core = spec.engine
    drafter = core._drafter
    target, draft = core.runner, drafter.draft
    assert draft.k_pool is target.k_pool and draft.block_tables is target.block_tables
    assert (
        draft.dec.layers[0].qkv.format_name == "sym_int4" and target.dec.layers[0].qkv.format_name == "fp32"
    )
    size = core.config.block_size
    checked = []
    propose = drafter.propose

    def context_k(slot: int, n: int) -> torch.Tensor:
        """K of positions 0..n-1 of the sequence in block-table row `slot`, [layers, n, kv heads, head dim]."""
        pos = torch.arange(n)
        blocks = target.block_tables[slot, pos // size].long()
        return target.k_pool[:, blocks, :, pos % size].clone()

    def checking(batch):
        before = [context_k(s.slot, len(s.tokens) - 1) for s in batch]
        drafts = propose(batch)
        for s, d, k in zip(batch, drafts, before, strict=True):
            n = len(s.tokens)
            assert torch.equal(context_k(s.slot, n - 1), k)  # the model's K/V, read and left alone
            if d:
                fed = [s.tokens[-1], *d[:-1]]
                rows = list(range(len(fed)))
                logits = draft.forward(fed, [n - 1 + i for i in rows], [s.slot] * len(fed), rows)
                assert logits.argmax(-1).tolist() == d
                checked.append(len(d))
        return drafts

    drafter.propose = checking
    ref = dense_plain.chat(GROUNDED, max_new_tokens=40)
    out = spec.chat(GROUNDED, max_new_tokens=40)
    assert out.text == ref.text
    assert out.timings.accepted_tokens > 0 and len(checked) >= 4


def test_a_shared_copy_replays_step_graphs_and_keeps_the_tokens(dense_plain: LLM, dense_llm: LLM) -> None:
    """The shared-pool copy's steps through graphs (`EAGER_REPLAY`: the capture's buffers, pad rows and scratch row
    on CPU), beside the model's own graphed steps: concurrent requests still get plain decoding's tokens."""
    from xpullm.engine.core import EngineConfig
    from xpullm.engine.step_graphs import EAGER_REPLAY, attach_step_graphs

    shared = SpeculativeConfig(
        method="low_bit_draft", draft_min_prob=0.0, draft_cost=0.0, draft_kv_cache_dtype="shared"
    )
    spec = LLM(
        dense_llm.model, tokenizer=dense_llm.tokenizer, speculative=shared, engine=EngineConfig(max_seqs=8)
    )
    core = spec.engine
    draft = core._drafter.draft
    for runner in (core.runner, draft):
        attach_step_graphs(runner, (1, 2, 4, 8), core.pool.num_blocks, core.config.max_seqs, EAGER_REPLAY)
    want = [c.text for c in dense_plain.generate(PROMPTS, max_new_tokens=24)]
    got = spec.generate(PROMPTS, max_new_tokens=24)
    assert [c.text for c in got] == want
    assert draft.graphs.replays > 0 and core.runner.graphs.replays > 0
    assert sum(c.timings.accepted_tokens for c in got) > 0
    assert core.stats().kv_used_blocks == 0
