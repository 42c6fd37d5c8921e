"""`DemoConfig`: every knob of the demo app, set from `xpullm demo` options or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEMO_LOW_BIT", "DemoConfig", "default_data_dir"]

# The engine default: the packaged checkpoint stores its tied head as Q8_0, which asym_int4 (the lossless format for
# its Q4_1 layers) would round to 4 bits a second time; sym_int4 measured better answers on the demo tasks.
DEMO_LOW_BIT = "sym_int4"


def default_data_dir() -> Path:
    """Where the demo keeps knowledge bases, GraphRAG projects and uploads (under the xpullm cache dir)."""
    from xpullm.models import cache_dir

    return cache_dir() / "demo"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo app instance."""

    model: str | None = None  # None: the packaged SmolLM2-135M-Instruct; else a folder, .gguf file or hub id
    low_bit: str = DEMO_LOW_BIT  # weight format the chat model is loaded in
    device: str = "auto"  # auto | cpu | cuda | xpu
    data_dir: Path = field(default_factory=default_data_dir)  # knowledge bases, GraphRAG projects, uploads
    max_upload_mb: int = (
        20  # per-file upload limit, enforced by the server (a typo'd 2 GB upload fails at once)
    )
    max_new_tokens: int = 256  # default answer budget shown in the chat tab
    max_new_tokens_limit: int = 2048  # slider ceiling: larger budgets tie up a generation slot for minutes
    concurrent_answers: int = 4  # answers generated at once (the batching engine shares decode steps between
    # them); more requests wait in line and see their position
    model_dirs: tuple[Path, ...] = ()  # searched for .gguf files and model folders (plus DATA_DIR/models)
    hf_cache: Path | None = (
        None  # Hugging Face cache the model picker lists (None: this process's HF_HUB_CACHE)
    )
    preload: bool = True  # load the chat model in a background thread at start (the page is up before it)
    sample_articles: int = 12  # Wikipedia articles the "load the sample corpus" button ingests
    graphrag_sample_articles: int = 3  # articles the GraphRAG sample indexes (extraction is the slow part)
    graphrag_sample_chars: int = 1200  # each GraphRAG sample article is cut to this many characters
    graphrag_settings: Path | None = None  # a settings.yaml for new GraphRAG projects (None: demo defaults)
    graphrag_transcript: Path | None = (
        None  # replay a recorded GraphRAG job (no model calls; see docs/graphrag.md)
    )
    ppl_tokens: int = 512  # tokens of Wikipedia text scored per format in the Models & speed tab
    bench_new_tokens: int = 32  # tokens generated per format to measure decode speed

    def __post_init__(self) -> None:
        if self.max_upload_mb < 1:
            raise ValueError(f"max_upload_mb={self.max_upload_mb} must be at least 1")
        if not 1 <= self.max_new_tokens <= self.max_new_tokens_limit:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} must be between 1 and max_new_tokens_limit="
                f"{self.max_new_tokens_limit}"
            )
        if self.concurrent_answers < 1:
            raise ValueError(f"concurrent_answers={self.concurrent_answers} must be at least 1")
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "model_dirs", tuple(Path(d).expanduser() for d in self.model_dirs))

    @property
    def model_search_dirs(self) -> tuple[Path, ...]:
        """Where the model picker looks: DATA_DIR/models, then the configured directories."""
        return (self.data_dir / "models", *self.model_dirs)
