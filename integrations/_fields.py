"""Reject unknown constructor arguments with a message that names the closest field.

pydantic's own `extra="forbid"` says only "Extra inputs are not permitted"; a user who typed `max_token=5` wants
to hear "did you mean max_tokens?". Every adapter class runs `reject_unknown` as a `mode="before"` validator.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator

__all__ = ["StrictArguments", "reject_unknown"]


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
        names.add(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
    return names


def reject_unknown(cls: type, data: Any, also: tuple[str, ...] = ()) -> Any:
    """Raise `ValueError` naming each unknown key of `data` (and its close match); return `data` unchanged.

    `also` lists keys a parent class consumes in its own before-validator (e.g. LangChain's deprecated
    `callback_manager`).
    """
    if not isinstance(data, dict):
        return data
    accepted = _accepted(cls) | set(also)
    unknown = [k for k in data if isinstance(k, str) and k not in accepted]
    if not unknown:
        return data
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(accepted), n=1, cutoff=0.6)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    public = sorted(n for n in accepted if not n.startswith("_"))
    raise ValueError(
        f"{cls.__name__} got unknown argument(s) {', '.join(hints)}; accepted arguments: {', '.join(public)}"
    )


class StrictArguments(BaseModel):
    """Mixin for every adapter class: unknown constructor arguments fail with `reject_unknown`'s message.

    List it first among the bases; `also_accepted` names keys a framework base consumes in its own validator.
    """

    also_accepted: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_arguments(cls, data: Any) -> Any:
        return reject_unknown(cls, data, also=cls.also_accepted)
