"""Weight slices prefetched into L2 before a tile kernel waits for its inputs (Hopper and later).

A batched tile program streams its [BLOCK_N, K-range] slice of weights through a few pipeline stages: the bytes
it has in flight at any time are its stages' worth, and each stage waits a full DRAM round trip. Session 10's
profile of the 16-row int4 tile found it latency-bound (issue slots 44% busy, a third of the stalls on L1TEX),
and deeper pipelines did not help (registers and shared memory cap the programs per SM). One bulk prefetch per
weight row (`cp.async.bulk.prefetch.L2.global`, sm_90) asks the memory system for the program's whole slice at
once, with no registers, shared memory or completion to wait for: the pipelined loads then find the bytes in L2.
Issued before `wait_for_inputs`, it also overlaps the previous kernel of the step (norm, attention, SwiGLU):
weights are never written by a step, so they may be read before the wait.

A prefetch changes no number: it is a hint, and the loads that follow read the same bytes either way.
`XPULLM_L2_PREFETCH=0` leaves it out (see `pdl.launch_options`). It runs only where PDL would (CUDA, compute
capability 9.0+, not the Triton interpreter), and only for slices it can address: every row start and length a
multiple of 16 bytes (`aligned`).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["aligned", "prefetch_rows"]

_ALIGN = 16  # bytes: the bulk prefetch's address and size granularity


@triton.jit
def prefetch_rows(row_ptrs, nbytes, ok, ON: tl.constexpr):
    """Prefetch `nbytes` bytes (a multiple of 16) from each of `row_ptrs` (16-byte aligned) into L2, where `ok`
    and nbytes > 0; nothing when ON is false."""
    if ON:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $3; mov.u32 $0, 0; }",
            "=r,l,r,r",
            [row_ptrs, (ok & (nbytes > 0)).to(tl.int32), nbytes.to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )


def aligned(*byte_counts: int) -> bool:
    """Whether every row start and length built from these byte counts (base address, row stride, split
    offsets, row length) is a multiple of the bulk prefetch's 16 bytes."""
    return all(b % _ALIGN == 0 for b in byte_counts)
