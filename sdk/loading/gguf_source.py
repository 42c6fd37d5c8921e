"""Read GGUF checkpoints tensor by tensor (memory-mapped), with HF names and exact low-bit mappings.

GGUF's Q4_0 / Q4_1 / Q8_0 blocks (32 elements, fp16 scale [+ min]) are exactly `sym_int4` / `asym_int4` /
`sym_int8` with group 32, so those tensors come out as `QuantizedWeight`s with no second rounding. Every
other tensor type is dequantized by the `gguf` package's reference code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xpullm.errors import CorruptCheckpoint, UnsupportedArchitecture
from xpullm.formats import QuantizedWeight, pack_nibbles
from xpullm.loading import gguf_meta

__all__ = ["EXACT_FORMATS", "GGUF_FAMILIES", "GGUFFamily", "GGUFSource"]


@dataclass(frozen=True)
class GGUFFamily:
    """How one GGUF architecture's tensor names map onto the transformers model."""

    arch: str
    permute_qk: bool  # llama.cpp's converter interleaves q/k rows for its rope; undo it
    names: dict[str, str] = field(
        default_factory=lambda: {
            "token_embd": "model.embed_tokens",
            "output_norm": "model.norm",
            "output": "lm_head",
            "attn_norm": "input_layernorm",
            "ffn_norm": "post_attention_layernorm",
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
            "attn_q_norm": "self_attn.q_norm",
            "attn_k_norm": "self_attn.k_norm",
        }
    )


GGUF_FAMILIES: dict[str, GGUFFamily] = {
    f.arch: f
    for f in (
        GGUFFamily("llama", permute_qk=True),
        GGUFFamily("mistral", permute_qk=True),
        GGUFFamily("qwen2", permute_qk=False),
        GGUFFamily("qwen3", permute_qk=False),
    )
}

_BLOCK = 32
# GGUF block types with an exact xpullm twin (group 32, same scale/min layout): read without re-rounding.
EXACT_FORMATS: dict[str, str] = {"Q4_0": "sym_int4", "Q4_1": "asym_int4", "Q8_0": "sym_int8"}
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)\.(weight|bias)$")
_GLOBAL = re.compile(r"^(.+)\.(weight|bias)$")


def _unpack_q4(qs: np.ndarray) -> torch.Tensor:
    """GGUF nibble order (element j low, j + 16 high, per block) -> codes [..., 32]."""
    q = torch.from_numpy(np.ascontiguousarray(qs))
    return torch.cat((q & 0x0F, q >> 4), dim=-1)


def _fp16(raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(raw).view(np.float16).squeeze(-1).copy())


class GGUFSource:
    """A GGUF file as a stream of (transformers tensor name, float tensor or QuantizedWeight)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.reader = gguf_meta.reader(self.path)
        except Exception as exc:  # the reader raises ValueError / struct.error / IndexError on bad bytes
            raise CorruptCheckpoint(
                f"cannot read GGUF file {self.path}: {exc}. The file is truncated or not GGUF; download it again."
            ) from exc
        arch_field = self.reader.fields.get("general.architecture")
        self.arch = bytes(arch_field.parts[-1]).decode() if arch_field else "unknown"
        self.family = GGUF_FAMILIES.get(self.arch)
        self.n_head = self._int(f"{self.arch}.attention.head_count")
        self.n_head_kv = self._int(f"{self.arch}.attention.head_count_kv") or self.n_head

    def _int(self, key: str) -> int | None:
        f = self.reader.fields.get(key)
        return int(f.parts[-1][0]) if f is not None else None

    @property
    def supported(self) -> bool:
        """Whether this architecture has a direct tensor mapping (others go through transformers)."""
        return self.family is not None

    def hf_name(self, gguf_name: str) -> str:
        """transformers parameter name for a GGUF tensor name."""
        assert self.family is not None
        names = self.family.names
        m = _LAYER.match(gguf_name)
        if m:
            layer, part, kind = m.groups()
            if part not in names:
                raise UnsupportedArchitecture(
                    f"GGUF tensor {gguf_name!r} of arch {self.arch!r} has no mapping"
                )
            return f"model.layers.{layer}.{names[part]}.{kind}"
        m = _GLOBAL.match(gguf_name)
        if not m or m.group(1) not in names:
            raise UnsupportedArchitecture(f"GGUF tensor {gguf_name!r} of arch {self.arch!r} has no mapping")
        return f"{names[m.group(1)]}.{m.group(2)}"

    def _row_order(self, gguf_name: str, rows: int) -> torch.Tensor | None:
        """Row permutation that undoes llama.cpp's q/k interleave, or None."""
        if not (self.family and self.family.permute_qk):
            return None
        part = gguf_name.split(".")[-2]
        heads = {"attn_q": self.n_head, "attn_k": self.n_head_kv}.get(part)
        if heads is None:
            return None
        # Converter: rows (h, two, half) -> (h, half, two). Reading (h, half, two) back as (h, two, half):
        idx = torch.arange(rows).reshape(heads, rows // heads // 2, 2)
        return idx.transpose(1, 2).reshape(rows)

    def count(self) -> int:
        """How many items `tensors()` yields (for progress bars)."""
        return len(self.reader.tensors)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
        """Every tensor, as a float tensor (F32/F16/other types) or an exact `QuantizedWeight`."""
        from gguf import GGMLQuantizationType as T
        from gguf import quants

        for t in self.reader.tensors:
            name = self.hf_name(t.name)
            shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists ne0 (= K) first
            try:
                if t.tensor_type.name in EXACT_FORMATS and len(shape) == 2:
                    value: torch.Tensor | QuantizedWeight = self._exact(t, shape)
                else:
                    arr = (
                        quants.dequantize(t.data, t.tensor_type)
                        if t.tensor_type not in (T.F32, T.F16)
                        else t.data
                    )
                    value = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)
            except (ValueError, IndexError) as exc:
                raise CorruptCheckpoint(f"GGUF tensor {t.name!r} in {self.path} is damaged: {exc}") from exc
            order = self._row_order(t.name, shape[0])
            if order is not None:
                value = _take_rows(value, order)
            yield name, value

    def _exact(self, t, shape: tuple[int, int]) -> QuantizedWeight:
        from gguf import GGMLQuantizationType as T

        n, k = shape
        blocks = np.asarray(t.data).reshape(n, k // _BLOCK, -1)
        scale = _fp16(blocks[..., 0:2])
        if t.tensor_type == T.Q8_0:
            codes = torch.from_numpy(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).copy()).reshape(n, k)
            return QuantizedWeight("sym_int8", shape, _BLOCK, codes, scale)
        if t.tensor_type == T.Q4_1:
            zero = _fp16(blocks[..., 2:4])
            codes = _unpack_q4(blocks[..., 4:]).reshape(n, k)
            return QuantizedWeight("asym_int4", shape, _BLOCK, pack_nibbles(codes), scale, zero)
        codes = _unpack_q4(blocks[..., 2:]).reshape(n, k)
        return QuantizedWeight("sym_int4", shape, _BLOCK, pack_nibbles(codes), scale)


def _take_rows(value: torch.Tensor | QuantizedWeight, order: torch.Tensor) -> torch.Tensor | QuantizedWeight:
    if isinstance(value, torch.Tensor):
        return value[order].contiguous()
    pick = lambda x: None if x is None else x[order].contiguous()  # noqa: E731
    return QuantizedWeight(
        value.format, value.shape, value.group_size, pick(value.data), pick(value.scales), pick(value.zeros)
    )
