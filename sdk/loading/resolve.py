"""Where a model comes from: a transformers folder, a `.gguf` file, a low-bit folder or a hub id -> `ModelSource`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpullm.errors import ModelNotFound, UnsupportedArchitecture
from xpullm.hub import download, is_hub_id
from xpullm.loading import gguf_meta
from xpullm.loading.sources import LOWBIT_MANIFEST

__all__ = ["ModelSource", "load_tokenizer", "read_config", "resolve_source"]

_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `kind` is `hf`, `gguf` or `lowbit`; `gguf_file` names the file inside `folder`."""

    kind: str
    folder: Path
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        """A short name for logs and `model_name` fields."""
        return self.gguf_file.removesuffix(".gguf") if self.gguf_file else self.folder.name


def resolve_source(path: str | os.PathLike, gguf_file: str | None = None) -> ModelSource:
    """Classify a model path / file / hub id, or raise `ModelNotFound` saying what was expected."""
    if not isinstance(path, (str, os.PathLike)):
        raise ModelNotFound(f"model must be a path or hub id string, got {type(path).__name__}")
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelNotFound(f"{p} is a file but not a .gguf; pass a .gguf file or a model folder")
        return ModelSource("gguf", p.parent, p.name)
    if p.is_dir():
        if gguf_file:
            if not (p / gguf_file).is_file():
                raise ModelNotFound(f"gguf_file {gguf_file!r} not found in {p}")
            return ModelSource("gguf", p, gguf_file)
        if (p / LOWBIT_MANIFEST).is_file():
            return ModelSource("lowbit", p)
        if (p / "config.json").is_file():
            return ModelSource("hf", p)
        ggufs = sorted(f.name for f in p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", p, ggufs[0])
        hint = f" It has several .gguf files ({ggufs}); pass gguf_file=." if ggufs else ""
        raise ModelNotFound(f"{p} has no config.json, low-bit manifest or .gguf file.{hint}")
    text = str(path)
    if is_hub_id(text):
        return resolve_source(download(text, _HUB_FILES), gguf_file)
    raise ModelNotFound(f"model path {text!r} does not exist (and is not a hub id like 'org/name')")


def _from_gguf(src: ModelSource, what: str, auto: Any, name_attr: str) -> Any:
    """The config / tokenizer (`auto` class) of a GGUF source, parsed once and then read from the cache
    (`gguf_meta.cached`); `name_attr` keeps naming the model's folder, not the cache's."""

    def from_cache(folder: str) -> Any:
        obj = auto.from_pretrained(folder)
        setattr(obj, name_attr, str(src.folder))
        return obj

    return gguf_meta.cached(
        src.folder / str(src.gguf_file), what,
        lambda: auto.from_pretrained(src.folder, gguf_file=src.gguf_file),
        lambda obj, folder: obj.save_pretrained(folder), from_cache,
    )  # fmt: skip


def load_tokenizer(source: ModelSource | str | os.PathLike) -> Any:
    """The tokenizer stored with a model (transformers folder, low-bit folder or GGUF)."""
    import transformers

    src = source if isinstance(source, ModelSource) else resolve_source(source)
    if src.kind == "gguf":
        return _from_gguf(src, "tokenizer", transformers.AutoTokenizer, "name_or_path")
    return transformers.AutoTokenizer.from_pretrained(src.folder)


def read_config(src: ModelSource) -> Any:
    """The transformers config of `src` (a clear error when the architecture is unknown)."""
    import transformers

    try:
        if src.kind == "gguf":
            return _from_gguf(src, "config", transformers.AutoConfig, "_name_or_path")
        return transformers.AutoConfig.from_pretrained(src.folder)
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitecture(f"cannot read the model config in {src.folder}: {exc}") from exc
