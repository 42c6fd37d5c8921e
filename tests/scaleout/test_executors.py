"""The executor seam without a cluster: the registry, ordering, recipes, and `import xpullm` staying free of Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xpullm.scaleout import ExecutorError, LocalExecutor, in_order, make_executor, recipe_for


def _square(model, item):
    return (model or 0) + item * item


def test_local_executor_runs_in_item_order_with_and_without_threads():
    ex = make_executor(None)
    assert isinstance(ex, LocalExecutor) and ex.workers == 1
    assert list(ex.map(_square, [3, 1, 2])) == [(0, 9), (1, 1), (2, 4)]
    assert list(ex.map(_square, [3, 1, 2], model=10, concurrency=3)) == [(0, 19), (1, 11), (2, 14)]
    assert make_executor(ex) is ex


def test_in_order_buffers_results_that_finish_early():
    assert list(in_order(iter([(2, "c"), (0, "a"), (1, "b"), (3, "d")]))) == ["a", "b", "c", "d"]


def test_unknown_executor_and_bad_options_are_one_line_errors():
    with pytest.raises(ExecutorError, match="unknown executor 'dask'; choose one of local, ray"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="takes no address"):
        make_executor("local:host:1")
    with pytest.raises(ExecutorError, match="must be an Executor"):
        make_executor(42)  # type: ignore[arg-type]


def test_recipes_rebuild_the_embedder_and_pickle_a_transcript_engine(tmp_path):
    from xpullm.graphrag import TranscriptLLM

    line = '{"model": "m", "prompt": "p", "params": {}, "text": "t", "stage": "s", "key": ""}\n'
    (tmp_path / "t.jsonl").write_text(line)
    llm = TranscriptLLM(tmp_path / "t.jsonl")
    copy = recipe_for(llm).build()
    assert type(copy) is TranscriptLLM and copy.generate("p").text == "t"
    assert recipe_for(llm).key == recipe_for(llm).key

    class Local:  # defined in a function: does not pickle
        pass

    with pytest.raises(ExecutorError, match="does not pickle"):
        recipe_for(Local())


def test_embedder_recipe_names_its_constructor_arguments():
    from xpullm.embeddings import Embedder

    recipe = recipe_for(Embedder(device="cpu", dtype="float32"), device="cpu")
    assert recipe.factory == "xpullm.embeddings:Embedder"
    assert recipe.kwargs == {
        "model": None,
        "low_bit": None,
        "device": "cpu",
        "dtype": "float32",
        "normalize": True,
    }


def test_import_xpullm_and_the_pipelines_do_not_import_ray():
    code = (
        "import sys, xpullm, xpullm.scaleout, xpullm.rag, xpullm.graphrag, xpullm.rag.cli, xpullm.graphrag.cli; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
