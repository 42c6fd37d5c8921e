"""Random paged-attention worlds shared by the CPU and Triton tests: sequences, shuffled block tables, schedules.

A world fixes every token's q/k/v row (sequence s, position p -> one row), the RoPE tables, the block tables
(each sequence owns distinct physical blocks in shuffled order) and the pools' initial contents. A schedule is a
list of steps, each a list of (sequence, first position, token count) chunks; `run` flattens every step into one
`PagedBatch` and calls the kernel with it and the world's `PagedLayer`, as the engine's forward does, and returns
each token's output row and the final pools.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import torch

from xpullm.kernels.paged import Kernel, PagedBatch, PagedLayer

Chunk = tuple[int, int, int]  # (sequence, first position, tokens)


@dataclass
class World:
    h: int
    kv: int
    d: int
    block_size: int
    lengths: list[int]  # tokens each sequence ends with
    rows: list[torch.Tensor]  # per sequence [length, (H + 2 KV) D]
    cos: torch.Tensor
    sin: torch.Tensor
    tables: torch.Tensor  # int32 [S, max_blocks]
    pools: dict[str, torch.Tensor]  # k_pool, v_pool (+ k_scale, v_scale for int8): initial contents
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    scale: float
    kv_cache_dtype: str = "auto"

    def to(self, device: torch.device) -> World:
        """The same world with its tensors on `device`."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(
            self, rows=[move(r) for r in self.rows], cos=move(self.cos), sin=move(self.sin),
            tables=move(self.tables), pools={k: move(t) for k, t in self.pools.items()},
            q_norm=move(self.q_norm), k_norm=move(self.k_norm),
        )  # fmt: skip


def rope_tables(positions: int, d: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama RoPE tables [positions, D] with sin's first half negated (the decoder's convention)."""
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(positions, dtype=torch.float64)[:, None] * inv[None]
    ang = torch.cat((ang, ang), -1)
    sin = ang.sin()
    sin[:, : d // 2] = -sin[:, : d // 2]
    return ang.cos().float(), sin.float()


def make_world(
    seed: int,
    h: int,
    kv: int,
    d: int,
    block_size: int,
    lengths: list[int],
    norms: bool,
    spare_blocks: int = 3,
    dtype: torch.dtype = torch.float32,
    fill: float | None = None,
    kv_cache_dtype: str = "auto",
) -> World:
    """A world with random rows; pools hold random values (or `fill`, e.g. NaN) where nothing was written.
    `kv_cache_dtype` "int8" / "fp8_e4m3": 8-bit code pools with fp32 scales (random, or `fill` in the scales)."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    need = [-(-n // block_size) for n in lengths]
    max_blocks = max(need) + 1
    num_blocks = sum(need) + spare_blocks
    phys = list(range(num_blocks))
    rng.shuffle(phys)
    tables = torch.full((len(lengths), max_blocks), -1, dtype=torch.int32)
    at = 0
    for s, nb in enumerate(need):
        tables[s, :nb] = torch.tensor(phys[at : at + nb], dtype=torch.int32)
        at += nb
    rows = [torch.randn(n, (h + 2 * kv) * d, generator=gen).to(dtype) for n in lengths]
    shape = (num_blocks, kv, block_size, d)
    if kv_cache_dtype != "auto":
        if kv_cache_dtype == "int8":
            codes = [torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8) for _ in range(2)]
        else:
            codes = [(torch.randn(shape, generator=gen) * 100).to(torch.float8_e4m3fn) for _ in range(2)]
        pools = dict(zip(("k_pool", "v_pool"), codes, strict=True))
        for name in ("k_scale", "v_scale"):
            pools[name] = (
                torch.rand(shape[:3], generator=gen) * 0.05 if fill is None else torch.full(shape[:3], fill)
            )
    elif fill is None:
        pools = {name: torch.randn(shape, generator=gen).to(dtype) for name in ("k_pool", "v_pool")}
    else:
        pools = {name: torch.full(shape, fill).to(dtype) for name in ("k_pool", "v_pool")}
    cos, sin = rope_tables(max(lengths) + 4, d)
    q_norm = (torch.rand(d, generator=gen) + 0.5) if norms else None
    k_norm = (torch.rand(d, generator=gen) + 0.5) if norms else None
    return World(
        h, kv, d, block_size, list(lengths), rows, cos, sin, tables, pools, q_norm, k_norm, 1.0 / math.sqrt(d),
        kv_cache_dtype,
    )  # fmt: skip


def random_schedule(
    rng: random.Random, lengths: list[int], seqs: list[int] | None = None
) -> list[list[Chunk]]:
    """Every token of `seqs` (default: all) once, in order per sequence: each step gives every unfinished
    sequence a random chunk (a decode-sized 1 often), and the chunks of a step come in shuffled order."""
    seqs = list(range(len(lengths))) if seqs is None else seqs
    done = dict.fromkeys(seqs, 0)
    steps = []
    while any(done[s] < lengths[s] for s in seqs):
        step = []
        for s in seqs:
            left = lengths[s] - done[s]
            if left and rng.random() < 0.85:
                take = rng.choice([1, 1, rng.randint(1, left)])
                take = min(take, left)
                step.append((s, done[s], take))
                done[s] += take
        if step:
            rng.shuffle(step)
            steps.append(step)
    return steps


def layer_of(world: World, pools: dict[str, torch.Tensor], window: int = 0, sinks: int = 0) -> PagedLayer:
    """The world's attention layer over `pools` (k_pool, v_pool, and k_scale, v_scale for 8-bit pools)."""
    return PagedLayer(
        pools["k_pool"], pools["v_pool"], world.h, world.scale, world.q_norm, world.k_norm, 1e-6,
        world.kv_cache_dtype, pools.get("k_scale"), pools.get("v_scale"), window, sinks,
    )  # fmt: skip


def batch_of(world: World, step: list[Chunk]) -> tuple[torch.Tensor, PagedBatch]:
    """One step's flattened qkv rows and its `PagedBatch` (the chunks' positions and sequences)."""
    qkv = torch.cat([world.rows[s][p : p + t] for s, p, t in step])
    positions = torch.cat([torch.arange(p, p + t) for s, p, t in step]).to(qkv.device)
    seq_index = torch.cat([torch.full((t,), s) for s, p, t in step]).to(qkv.device)
    return qkv, PagedBatch(positions, seq_index, world.tables, world.cos, world.sin)


def run(
    world: World, schedule: list[list[Chunk]], kernel: Kernel, window: int = 0, sinks: int = 0
) -> tuple[dict[tuple[int, int], torch.Tensor], dict[str, torch.Tensor]]:
    """Run `schedule` through `kernel` on clones of the world's pools (one layer, with `window` and `sinks`):
    ({(seq, pos): output row}, final pools)."""
    pools = {name: t.clone() for name, t in world.pools.items()}
    layer = layer_of(world, pools, window, sinks)
    outputs = {}
    for step in schedule:
        qkv, batch = batch_of(world, step)
        out = kernel(qkv, batch, layer)
        i = 0
        for s, p, t in step:
            for pos in range(p, p + t):
                outputs[(s, pos)] = out[i]
                i += 1
    return outputs, pools


def bits(t: torch.Tensor) -> torch.Tensor:
    """t with fp8 codes seen as bytes (torch.equal has no fp8 kernel; equal bytes are equal codes)."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def seq_slots(world: World, pool: torch.Tensor, seq: int) -> torch.Tensor:
    """The written slots of `seq` in a pool (or scale tensor), in position order: [length, KV, D] ([length, KV])."""
    bs = world.block_size
    tables = world.tables.cpu()
    return torch.stack([pool[tables[seq, p // bs], :, p % bs] for p in range(world.lengths[seq])])
