"""`Embedder`: sentence embeddings from a sentence-transformers folder, without sentence-transformers.

Reads the folder's own module list (`modules.json`) to learn the pooling mode, the sequence limit and whether the
vectors are normalized, then runs the transformer with token-length-aware batching: texts are tokenized once,
sorted by length and padded only to the longest text of their batch, so short texts never pay for long ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpullm.errors import ModelNotFound, XPULLMError
from xpullm.hub import download, is_hub_id
from xpullm.models import DEFAULT_EMBEDDER_NAME, default_embedder_path

if TYPE_CHECKING:
    import numpy as np
    import torch

    from xpullm.protocols import EmbeddingModel

__all__ = ["POOLING_MODES", "Embedder", "EmbedderConfig", "as_embedding_model", "default_embedder_path"]

# Inputs longer than this many texts show a tqdm bar (unless show_progress says otherwise).
_PROGRESS_MIN_TEXTS = 256


@dataclass(frozen=True)
class EmbedderConfig:
    """What a sentence-transformers folder says about how to turn token states into one vector."""

    pooling: str = "mean"  # one of POOLING_MODES; all-MiniLM and most ST models use mean pooling
    max_seq_length: int = 256  # the length the model was trained with; longer texts are truncated
    normalize: bool = True  # folder has a Normalize module -> cosine == dot product downstream
    dim: int = 384

    @classmethod
    def from_folder(cls, folder: Path, hidden_size: int, max_positions: int) -> EmbedderConfig:
        """Read `modules.json`, `1_Pooling/config.json` and `sentence_bert_config.json` when they exist."""
        pooling, normalize, max_len = "mean", False, min(512, max_positions)
        modules_file = folder / "modules.json"
        modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Normalize"):
                normalize = True
            elif kind.endswith("Pooling"):
                pool_cfg = folder / module.get("path", "1_Pooling") / "config.json"
                if pool_cfg.exists():
                    pooling = _pooling_from_config(json.loads(pool_cfg.read_text()))
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.exists():
            max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
        if not modules:
            # A plain transformers folder: mean pooling is the safest generic choice, and cosine search wants
            # unit vectors.
            normalize = True
        return cls(
            pooling=pooling, max_seq_length=min(max_len, max_positions), normalize=normalize, dim=hidden_size
        )


def _pooling_from_config(cfg: dict[str, Any]) -> str:
    for key, mode in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("pooling_mode_lasttoken", "last"),
    ):
        if cfg.get(key):
            return mode
    raise XPULLMError(f"unsupported pooling config {cfg}; supported modes: {', '.join(POOLING_MODES)}")


def _pool_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    summed = (states * mask).sum(1)
    return summed / mask.sum(1).clamp(min=1e-9)


def _pool_mean_sqrt_len(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9).sqrt()


def _pool_cls(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return states[:, 0]


def _pool_max(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return states.masked_fill(mask == 0, float("-inf")).max(1).values


def _pool_last(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    # Right padding: the last real token sits at length - 1.
    last = mask.squeeze(-1).sum(1).long() - 1
    return states[torch.arange(states.shape[0], device=states.device), last]


POOLING_MODES: dict[str, Callable[[Any, Any], Any]] = {
    "mean": _pool_mean,
    "mean_sqrt_len": _pool_mean_sqrt_len,
    "cls": _pool_cls,
    "max": _pool_max,
    "last": _pool_last,
}

# Compute dtype per device kind when dtype="auto", chosen by measurement (docs/benchmarks-rag.md, all-MiniLM-L6,
# batch 32): on a Xeon with AMX/AVX512-BF16 bf16 autocast ran 1.55x the fp32 path (2.2x sentence-transformers fp32);
# on an H100 bf16 was the fastest (fp16 autocast was ~20% slower, its casts cost more than they save at this size);
# on an AVX2-only CPU bf16 is emulated and ran 5x *slower*, so `_resolve_dtype` falls back to fp32 there. Every
# choice stays within cosine 0.9999 of fp32, so rankings do not change.
_AUTO_DTYPE = {"cpu": "bfloat16", "cuda": "bfloat16", "xpu": "bfloat16"}


class Embedder:
    """Turns texts into L2-normalized sentence vectors with a sentence-transformers model folder or hub id.

    Args:
        model: a local folder, a hub id (`org/name`, fetched through `huggingface_hub` when online), or None for
            the packaged all-MiniLM-L6-v2.
        low_bit: a low-bit format (`"sym_int8"`, `"sym_int4"`, ...) applied to the linear layers with
            `xpullm.optimize_model`, or None to keep the checkpoint's weights.
        device: `"auto"`, `"cpu"`, `"cuda"` or `"xpu"`.
        dtype: compute dtype: `"auto"` (bf16 on GPUs and on CPUs with native bf16, else fp32), `"float32"`, `"bfloat16"`,
            `"float16"`. Under bf16 a text's vector depends slightly on what it is batched with (kernels are chosen
            by batch shape and padded width; ~1e-3 per component, cosine > 0.9999); use `"float32"` when vectors
            must be reproducible across batchings to ~1e-7.
        normalize: L2-normalize the vectors; None follows the model folder (a Normalize module -> True).
        show_progress: True/False forces the progress bar; None shows it for inputs of 256+ texts.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        low_bit: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        normalize: bool | None = None,
        show_progress: bool | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        from xpullm.devices import resolve_device

        self.device = resolve_device(device)
        folder = _resolve_model_folder(model)
        self.model_name = _display_name(model, folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        # fp32 master weights whatever the checkpoint stores: the compute dtype is chosen by `dtype` (autocast).
        hf_model = AutoModel.from_pretrained(str(folder)).float().eval()
        self.config = EmbedderConfig.from_folder(
            folder, hf_model.config.hidden_size, getattr(hf_model.config, "max_position_embeddings", 512)
        )
        self.normalize = self.config.normalize if normalize is None else bool(normalize)
        self.low_bit = low_bit
        if low_bit is not None:
            hf_model = _apply_low_bit(hf_model, low_bit)
        self.model = hf_model.to(self.device)
        self.dtype = _resolve_dtype(dtype, self.device.type)
        self.show_progress = show_progress

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return self.config.dim

    @property
    def max_seq_length(self) -> int:
        """Tokens per text that the model sees; longer texts are truncated."""
        return self.config.max_seq_length

    def __repr__(self) -> str:
        return (
            f"Embedder(model={self.model_name!r}, dim={self.dim}, device={self.device.type!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, low_bit={self.low_bit!r})"
        )

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> list[list[float]]:
        """Embed `texts` and return one list of Python floats per text, in the input order."""
        return self.embed_matrix(texts, batch_size=batch_size, show_progress=show_progress).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query string."""
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}: {text!r:.80}")
        return self.embed([text])[0]

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's tokenizer, without special tokens (chunks are sized with it)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed_matrix(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """Like `embed` but returns a float32 numpy array of shape [len(texts), dim] (what vector indexes want)."""
        import numpy as np
        import torch

        texts = _check_texts(texts)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Tokenize once without padding; the lengths drive the sort, so each batch pads only to its own longest.
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_seq_length,
            padding=False,
            return_attention_mask=False,
        )["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        show = show_progress if show_progress is not None else self.show_progress
        if show is None:
            show = len(texts) >= _PROGRESS_MIN_TEXTS
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="embedding", unit="text", disable=not show)
        pad_id = self.tokenizer.pad_token_id or 0
        pool = POOLING_MODES[self.config.pooling]
        try:
            with torch.inference_mode(), self._autocast():
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    width = len(encoded[idx[0]])
                    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for row, i in enumerate(idx):
                        seq = encoded[i]
                        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                        mask[row, : len(seq)] = 1
                    ids, mask = ids.to(self.device), mask.to(self.device)
                    states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                    vecs = pool(states.float(), mask.unsqueeze(-1).float())
                    if self.normalize:
                        vecs = torch.nn.functional.normalize(vecs, p=2, dim=1)
                    out[idx] = vecs.cpu().numpy()
                    bar.update(len(idx))
        finally:
            bar.close()
        return out

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(
            "embed expects a list of strings; for one string use embed_query(text) or embed([text])"
        )
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}: {t!r:.80}")
    return texts


def _resolve_dtype(dtype: str, device_kind: str) -> torch.dtype:
    import torch

    from xpullm.devices import native_bf16

    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        name = _AUTO_DTYPE.get(device_kind, "float32")
        if device_kind == "cpu" and not native_bf16(torch.device("cpu")):
            name = "float32"  # emulated bf16 is slower than fp32 on CPUs without AVX512-BF16/AMX
        return choices[name]
    if dtype not in choices:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of: auto, {', '.join(choices)}")
    return choices[dtype]


def _apply_low_bit(model: Any, low_bit: str) -> Any:
    try:
        from xpullm.optimize import optimize_model
    except ImportError as exc:  # the core loader is a separate layer; say which piece is missing
        raise XPULLMError(
            f"low_bit={low_bit!r} needs xpullm.optimize_model, which this build does not provide; "
            "use low_bit=None"
        ) from exc
    return optimize_model(model, low_bit=low_bit)


def _resolve_model_folder(model: str | os.PathLike[str] | None) -> Path:
    if model is None:
        return default_embedder_path()
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a folder path, a hub id or None, got {type(model).__name__}")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(
                f"{path} has no config.json; pass a sentence-transformers or transformers model folder"
            )
        return path
    text = str(model)
    if not is_hub_id(text):
        raise ModelNotFound(
            f"embedding model folder {text!r} does not exist; pass an existing folder or a hub id"
        )
    return download(text, what="embedding model")


def _display_name(model: str | os.PathLike[str] | None, folder: Path) -> str:
    if model is None:
        return DEFAULT_EMBEDDER_NAME
    return str(model)


def as_embedding_model(
    embedder: EmbeddingModel | str | os.PathLike[str] | None, check: bool = True
) -> EmbeddingModel:
    """`embedder` itself, or an `Embedder` loaded from a folder / hub id (None: the packaged default).

    With `check`, an object that does not follow `xpullm.protocols.EmbeddingModel` raises a `TypeError`.
    """
    if embedder is None or isinstance(embedder, (str, os.PathLike)):
        return Embedder(embedder)
    from xpullm.protocols import EmbeddingModel

    if check and not isinstance(embedder, EmbeddingModel):
        raise TypeError(
            f"embedder must be an xpullm.Embedder, a model path/hub id or None; {type(embedder).__name__} does not "
            "follow xpullm.protocols.EmbeddingModel (model_name, dim, embed_matrix, count_tokens)"
        )
    return embedder
