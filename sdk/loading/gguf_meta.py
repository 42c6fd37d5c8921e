"""What a GGUF file's metadata parses into, kept so it is parsed once.

Parsing a GGUF header builds a Python object per vocabulary string and merge rule: about 2 s for a 49k-token
vocabulary on a 2-vCPU Xeon, and a load used to do it four times (the config and the tokenizer through
transformers, the format choice and the weight stream through `GGUFSource`). Now:
- `reader(path)`: one parsed `GGUFReader` per file version in this process (the format choice and the weight
  stream share it);
- `cached(...)`: the transformers config and tokenizer made from a GGUF file, saved once under
  `<cache>/gguf/<file>-<tag>/` and loaded from there by later processes (0.35 s instead of ~4 s). The tag covers
  the file's path, size and modification time and the transformers version, so an edited file or a new
  transformers parses again. A cache entry that fails to load is rebuilt from the file; a cache that cannot be
  written only costs the parse.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from xpullm.settings import runtime_settings

__all__ = ["cached", "reader"]

log = logging.getLogger("xpullm.loading")
T = TypeVar("T")


def _version(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _reader(key: tuple[str, int, int]) -> Any:
    from gguf import GGUFReader

    return GGUFReader(key[0])


def reader(path: str | os.PathLike) -> Any:
    """The parsed `gguf.GGUFReader` of `path` (shared while the file is unchanged; read-only)."""
    return _reader(_version(Path(path)))


def _entry(path: Path, what: str) -> Path:
    import transformers

    name, size, mtime = _version(path)
    tag = hashlib.sha256(f"{name}\0{size}\0{mtime}\0{transformers.__version__}".encode()).hexdigest()[:16]
    return runtime_settings().cache_dir() / "gguf" / f"{path.stem}-{tag}" / what


def cached(path: str | os.PathLike, what: str, parse: Callable[[], T], save: Callable[[T, str], None],
           load: Callable[[str], T]) -> T:  # fmt: skip
    """`what` (e.g. "config", "tokenizer") of GGUF file `path`: `load(folder)` from the cache, else `parse()`
    and `save(obj, folder)` it there (written to a temporary folder, then renamed: never half-written)."""
    entry = _entry(Path(path), what)
    if entry.is_dir():
        try:
            return load(str(entry))
        except Exception as exc:  # a damaged entry (a disk error, a file edited by hand): parse again
            log.warning(
                "xpullm: the cached %s of %s does not load (%s); reading the GGUF file", what, path, exc
            )
            shutil.rmtree(entry, ignore_errors=True)
    obj = parse()
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        save(obj, str(tmp))
        os.replace(tmp, entry)  # a concurrent writer may have won: then this rename fails and its copy stays
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return obj
