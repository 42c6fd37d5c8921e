"""Generation-argument names other stacks use, mapped onto the engine's (shared by the LangChain and LlamaIndex
adapters): transformers' `do_sample` and IPEX-LLM's low-bit format aliases."""

from __future__ import annotations

from typing import Any

__all__ = ["IPEX_LOW_BIT_ALIASES", "apply_do_sample", "ipex_low_bit"]

# IPEX-LLM names that differ from xpullm's format registry; every other name is passed through unchanged.
IPEX_LOW_BIT_ALIASES = {"fp8": "fp8_e5m2"}


def ipex_low_bit(name: str | None) -> str | None:
    """xpullm's format name for an IPEX-LLM `load_in_low_bit` value ("fp8" -> "fp8_e5m2")."""
    return IPEX_LOW_BIT_ALIASES.get(name, name) if name is not None else None


def apply_do_sample(params: dict[str, Any]) -> dict[str, Any]:
    """Replace transformers' `do_sample` with the engine's temperature: False = greedy (temperature 0);
    True with temperature 0 = sampling at temperature 1 (transformers' default); True otherwise keeps it."""
    if "do_sample" not in params:
        return params
    params = dict(params)
    sample = params.pop("do_sample")
    if not isinstance(sample, bool):
        raise ValueError(f"do_sample={sample!r} is invalid: expected True or False")
    if not sample:
        params["temperature"] = 0.0
    elif not params.get("temperature"):
        params["temperature"] = 1.0
    return params
