"""Fine-tuning on low-bit weights: QLoRA-style LoRA adapters over frozen `LowBitLinear` layers, through PEFT.

`import xpullm.finetune` stays light; PEFT and TRL load on first use of a name below (the `finetune` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FinetuneConfig": "xpullm.finetune.config",
    "DEFAULT_TARGETS": "xpullm.finetune.config",
    "finetune": "xpullm.finetune.trainer",
    "FinetuneResult": "xpullm.finetune.trainer",
    "load_base": "xpullm.finetune.trainer",
    "load_records": "xpullm.finetune.data",
    "tokenize_records": "xpullm.finetune.data",
    "prepare_model_for_kbit_training": "xpullm.finetune.prepare",
    "LowBitLoraLinear": "xpullm.finetune.peft_lora",
    "lora_config": "xpullm.finetune.peft_lora",
    "register_lowbit": "xpullm.finetune.peft_lora",
    "attach_adapter": "xpullm.finetune.adapters",
    "merge_adapter": "xpullm.finetune.adapters",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xpullm.finetune' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name in ("peft", "trl"):
            raise ModuleNotFoundError(
                f"xpullm.finetune.{name} needs {exc.name}: pip install 'xpullm[finetune]'", name=exc.name
            ) from exc
        raise
    globals()[name] = value
    return value
