"""The paged attention the engine calls (through the op registry) against dense causal attention, and its
invariance: a token's output is bitwise the same whatever the other tokens of the step or the prompt's chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xpullm.engine._paged_ref import reference_paged_attention
from xpullm.engine.step_kernels import OpContext, select_op
from xpullm.kernels.paged import PagedBatch, PagedLayer


def _setup(seed: int, h: int, kv: int, d: int, block: int, lengths: list[int]):
    g = torch.Generator().manual_seed(seed)
    n_blocks = sum(-(-n // block) for n in lengths) + 3
    tables = torch.zeros((len(lengths), max(-(-n // block) for n in lengths)), dtype=torch.int32)
    perm = torch.randperm(n_blocks, generator=g).tolist()  # scattered physical blocks
    for s, n in enumerate(lengths):
        for j in range(-(-n // block)):
            tables[s, j] = perm.pop()
    qkv = [torch.randn(n, (h + 2 * kv) * d, generator=g) for n in lengths]
    angle = torch.randn(128, d // 2, generator=g)
    cos = torch.cat([angle.cos(), angle.cos()], -1)
    sin = torch.cat([-angle.sin(), angle.sin()], -1)
    pools = lambda: (torch.zeros(n_blocks, kv, block, d), torch.zeros(n_blocks, kv, block, d))  # noqa: E731
    return qkv, cos, sin, tables, pools


def _run(steps, qkv, cos, sin, tables, pools, h):
    """steps: list of [(seq, start, count)]; returns {(seq, pos): output row}."""
    k_pool, v_pool = pools()
    out = {}
    for step in steps:
        x = torch.cat([qkv[s][a : a + n] for s, a, n in step])
        pos = torch.cat([torch.arange(a, a + n) for s, a, n in step])
        seq = torch.cat([torch.full((n,), s) for s, a, n in step])
        batch = PagedBatch(pos, seq, tables, cos, sin)
        y = reference_paged_attention(x, batch, PagedLayer(k_pool, v_pool, h, 0.125))
        for row, (s, p) in enumerate(zip(seq.tolist(), pos.tolist(), strict=True)):
            out[(s, p)] = y[row]
    return out


@pytest.mark.parametrize(("seed", "h", "kv", "block"), [(0, 4, 2, 4), (1, 6, 3, 16), (2, 2, 2, 8)])
def test_paged_matches_dense_causal_attention(seed: int, h: int, kv: int, block: int) -> None:
    d, lengths = 16, [13, 5, 30]
    qkv, cos, sin, tables, pools = _setup(seed, h, kv, d, block, lengths)
    got = _run([[(s, 0, n) for s, n in enumerate(lengths)]], qkv, cos, sin, tables, pools, h)
    for s, n in enumerate(lengths):
        heads = qkv[s].view(n, h + 2 * kv, d)
        c, si = cos[:n, None], sin[:n, None]
        rot = lambda x, c=c, si=si: x * c + x.roll(d // 2, -1) * si  # noqa: E731
        q, k, v = rot(heads[:, :h]), rot(heads[:, h : h + kv]), heads[:, h + kv :]
        ref = F.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            is_causal=True,
            scale=0.125,
            enable_gqa=True,
        ).transpose(0, 1)
        mine = torch.stack([got[(s, p)] for p in range(n)]).view(n, h, d)
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_output_does_not_depend_on_batch_or_chunking() -> None:
    h, kv, d, block = 6, 2, 32, 8
    lengths = [37, 9, 90]  # block 8: the third sequence's keys cross the 64-token padding bucket
    qkv, cos, sin, tables, pools = _setup(5, h, kv, d, block, lengths)
    alone = {}
    for s, n in enumerate(lengths):  # each sequence alone, whole prompt in one step
        alone.update(_run([[(s, 0, n)]], qkv, cos, sin, tables, pools, h))
    # All together, prompts cut into uneven chunks and interleaved, then one token per step.
    mixed = [
        [(0, 0, 5), (1, 0, 9)],
        [(2, 0, 3), (0, 5, 17), (1, 9, 0)],
        [(0, 22, 15), (2, 3, 17)],
        [(2, 20, 50)],
        [(2, 70, 1)],
        [(2, 71, 19)],
    ]
    together = _run(mixed, qkv, cos, sin, tables, pools, h)
    assert together.keys() == alone.keys()
    for key, value in alone.items():
        assert torch.equal(together[key], value), key


def test_registry_picks_an_implementation_for_every_decoder_op() -> None:
    ctx = OpContext("cpu", torch.float32, 64, False)
    assert select_op("paged_attention", ctx).name in ("reference", "kernels.paged")
    assert (
        select_op("rms_norm", OpContext("cpu", torch.bfloat16)).name == "torch"
    )  # the native op is fp32 only
    assert select_op("rope_kv_write", ctx).load(ctx) is None  # fused only on GPUs
    with pytest.raises(LookupError, match="no_such_op"):
        select_op("no_such_op", ctx)


def test_reference_declines_what_it_does_not_model() -> None:
    """The engine's temporary twin runs float pools without a window: anything else is an explicit error."""
    qkv, cos, sin, tables, pools = _setup(0, 4, 2, 16, 4, [6])
    k_pool, v_pool = pools()
    batch = PagedBatch(torch.arange(6), torch.zeros(6, dtype=torch.long), tables, cos, sin)
    with pytest.raises(ValueError, match="window=4"):
        reference_paged_attention(qkv[0], batch, PagedLayer(k_pool, v_pool, 4, 0.25, window=4))
