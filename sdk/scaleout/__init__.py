"""Scale-out: a job's independent pieces (parsing, chunking, embedding, LLM calls) run on an executor, picked by name.

    from xpullm.graphrag import GraphRAG
    GraphRAG("project").index("docs/", executor="ray")        # CLI: xpullm graphrag index --ray
    kb.add(["docs/"], executor="ray:10.0.0.5:6379")              # CLI: xpullm kb add KB docs/ --ray 10.0.0.5:6379

The driver (the process that runs the job) stays the only writer of the store, the LLM cache and stats.json; the
workers compute. See docs/scale-out.md. Ray is imported only when a Ray executor is made.
"""

from xpullm.scaleout.base import (
    EXECUTORS,
    Executor,
    ExecutorError,
    in_order,
    make_executor,
    register_executor,
)
from xpullm.scaleout.local import LocalExecutor
from xpullm.scaleout.recipes import RECIPES, ModelRecipe, recipe_for, register_recipe

__all__ = [
    "EXECUTORS",
    "RECIPES",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "ModelRecipe",
    "in_order",
    "make_executor",
    "recipe_for",
    "register_executor",
    "register_recipe",
]
