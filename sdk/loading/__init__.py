"""Model loading: transformers folders, GGUF files, hub ids and xpullm low-bit folders."""

from xpullm.loading.auto import AutoModelForCausalLM, ModelSource, load_tokenizer, resolve_source
from xpullm.loading.lowbit_io import save_low_bit

__all__ = ["AutoModelForCausalLM", "ModelSource", "load_tokenizer", "resolve_source", "save_low_bit"]
