"""Model recipes: how a worker process builds its own copy of the driver's engine or embedder.

A model is never shipped as weights: a worker loads it from the same place the driver did (a path every machine
can read, or a hub id), so a recipe is an importable factory plus its keyword arguments. Types register how to
read those arguments from an instance (`register_recipe`); any other object that pickles is shipped pickled (a
`TranscriptLLM`, a small custom engine).
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xpullm.scaleout.base import ExecutorError

__all__ = ["RECIPES", "ModelRecipe", "recipe_for", "register_recipe"]


@dataclass(frozen=True)
class ModelRecipe:
    """`factory(**kwargs)` builds the model; `factory` is "module:qualname" so a worker imports it by name."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Same recipe, same key: a worker builds each model once and reuses it for every piece."""
        blob = pickle.dumps((self.factory, sorted(self.kwargs.items())))
        return hashlib.sha256(blob).hexdigest()[:16]

    def build(self) -> Any:
        """Import the factory and call it."""
        module, _, name = self.factory.partition(":")
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
        return target(**self.kwargs)


RecipeFn = Callable[[Any, "str | None"], ModelRecipe]

RECIPES: dict[str, RecipeFn] = {}
"""Recipe readers by the model's type ("module.QualName"): `fn(model, device) -> ModelRecipe`."""


def register_recipe(type_path: str) -> Callable[[RecipeFn], RecipeFn]:
    """Decorator: `fn(model, device)` reads the recipe of instances of `type_path` (device: a worker override)."""

    def wrap(fn: RecipeFn) -> RecipeFn:
        RECIPES[type_path] = fn
        return fn

    return wrap


def recipe_for(model: Any, device: str | None = None) -> ModelRecipe:
    """The recipe of `model`: a registered reader for its type (or a base type), else the object pickled."""
    for cls in type(model).__mro__:
        reader = RECIPES.get(f"{cls.__module__}.{cls.__qualname__}")
        if reader is not None:
            return reader(model, device)
    try:
        blob = pickle.dumps(model)
    except Exception as exc:
        raise ExecutorError(
            f"cannot send a {type(model).__name__} to the workers: it does not pickle ({exc}) and no recipe is "
            "registered for its type; register one with xpullm.scaleout.register_recipe"
        ) from exc
    return ModelRecipe("xpullm.scaleout.recipes:_unpickle", {"blob": blob})


def _unpickle(blob: bytes) -> Any:
    return pickle.loads(blob)


@register_recipe("xpullm.engine.llm.LLM")
def _llm_recipe(llm: Any, device: str | None) -> ModelRecipe:
    from xpullm.engine.params import InvalidParameter

    try:
        kwargs = llm.rebuild_args(device)
    except InvalidParameter as exc:
        raise ExecutorError(f"cannot send this xpullm.LLM to the workers: {exc}") from exc
    return ModelRecipe("xpullm.engine:LLM", kwargs)


@register_recipe("xpullm.embeddings.Embedder")
def _embedder_recipe(embedder: Any, device: str | None) -> ModelRecipe:
    from xpullm.models import DEFAULT_EMBEDDER_NAME

    name = embedder.model_name
    kwargs = {
        "model": None if name == DEFAULT_EMBEDDER_NAME else name,
        "low_bit": embedder.low_bit,
        "device": device or embedder.device.type,
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "normalize": embedder.normalize,
    }
    return ModelRecipe("xpullm.embeddings:Embedder", kwargs)
