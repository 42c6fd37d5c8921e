"""`xpullm.Embedder` on the packaged all-MiniLM-L6-v2: shapes, normalization, agreement with the reference
implementation (sentence-transformers), length-aware batching, retrieval sanity and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import xpullm
from xpullm.embeddings import POOLING_MODES, Embedder, EmbedderConfig, default_embedder_path
from xpullm.errors import ModelNotFound

TEXTS = [
    "A cat sits on the mat.",
    "The stock market fell sharply on Monday after the central bank raised interest rates by half a point.",
    "Photosynthesis turns light into chemical energy.",
    "short",
    "",
]


def test_public_export_and_properties(embedder: Embedder) -> None:
    assert xpullm.Embedder is Embedder
    assert embedder.dim == 384 and embedder.max_seq_length == 256
    assert embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.config == EmbedderConfig(pooling="mean", max_seq_length=256, normalize=True, dim=384)
    assert "dim=384" in repr(embedder)


def test_shapes_types_and_unit_norm(embedder: Embedder) -> None:
    vecs = embedder.embed(TEXTS)
    assert len(vecs) == len(TEXTS) and all(len(v) == 384 for v in vecs)
    assert all(type(x) is float for x in vecs[0])
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5) for v in vecs)
    assert embedder.embed([]) == []


# How far one text's vector may move when its batch companions change (same text, other texts beside it or none).
# fp32 is batch-invariant up to rounding noise: measured 2.2e-7 over 120 texts x batch sizes 1..120 on a Sapphire
# Rapids Xeon. bf16 autocast is not, and padding cannot make it so: bf16 keeps 8 mantissa bits, oneDNN picks its
# AMX/AVX-512 kernel by the GEMM's M = batch x padded width (the 1536->384 FFN projection's rows change from M=40
# on) and the bf16 SDPA kernel's blocking changes with the padded key length, so each rounding lands elsewhere.
# Measured there: up to 1.1e-3 per component, cosine >= 0.99998 (the earlier Zen4 CI, no AMX, stayed within 1e-5).
# The bf16 bound is its unit roundoff 2**-8 = 3.9e-3, one rounding step of a component of a unit vector.
_BATCH_ATOL = {"float32": 1e-5, "bfloat16": 2**-8}


def _batch_atol(embedder: Embedder) -> float:
    return _BATCH_ATOL[str(embedder.dtype).removeprefix("torch.")]


def test_query_equals_its_row_in_a_batch(each_dtype_embedder: Embedder) -> None:
    vecs = np.asarray(each_dtype_embedder.embed(TEXTS))
    q = np.asarray(each_dtype_embedder.embed_query(TEXTS[0]))
    assert np.abs(q - vecs[0]).max() < _batch_atol(each_dtype_embedder)
    assert q @ vecs[0] > 0.9999


def test_matches_sentence_transformers_reference(embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_embedder_path()), device="cpu")
    ref = reference.encode(TEXTS[:4], normalize_embeddings=True)
    ours = np.asarray(embedder.embed(TEXTS[:4]))
    cos = (ours * ref).sum(1)
    assert cos.min() > 0.9999, cos


def test_length_aware_batching_equals_one_by_one(each_dtype_embedder: Embedder) -> None:
    texts = [("word " * n).strip() for n in (3, 300, 17, 1, 45, 8)]  # 300 words is truncated to 256 tokens
    batched = each_dtype_embedder.embed_matrix(texts, batch_size=3)
    single = np.stack([each_dtype_embedder.embed_matrix([t], batch_size=1)[0] for t in texts])
    assert np.abs(batched - single).max() < _batch_atol(each_dtype_embedder)
    assert (batched * single).sum(1).min() > 0.9999


def test_unnormalized_option(embedder: Embedder) -> None:
    raw = Embedder(normalize=False, device="cpu").embed(TEXTS[:2])
    norms = [math.sqrt(sum(x * x for x in v)) for v in raw]
    assert all(n > 1.5 for n in norms)  # mean-pooled MiniLM states are far from unit length
    unit = embedder.embed(TEXTS[:2])
    assert np.allclose(np.asarray(raw) / np.asarray(norms)[:, None], unit, atol=1e-5)


def test_retrieval_sanity(embedder: Embedder) -> None:
    docs = [
        "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
        "Bananas are rich in potassium.",
        "Python is a popular programming language.",
        "The Great Wall of China is visible across many provinces.",
        "Mount Everest is the highest mountain above sea level.",
    ]
    query = embedder.embed_query("Which landmark stands in the French capital?")
    scores = np.asarray(embedder.embed(docs)) @ np.asarray(query)
    assert int(scores.argmax()) == 0 and scores[0] > scores[1:].max() + 0.1


def test_progress_bar_for_long_inputs(embedder: Embedder, capsys) -> None:
    embedder.embed(["x"] * 3, show_progress=True)
    assert "embedding" in capsys.readouterr().err
    embedder.embed(["x"] * 3)
    assert capsys.readouterr().err == ""  # short inputs stay quiet by default


def test_pooling_registry() -> None:
    import torch

    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[[1.0], [1.0], [0.0]]])  # the third token is padding
    assert POOLING_MODES["mean"](states, mask).tolist() == [[2.0, 3.0]]
    assert POOLING_MODES["cls"](states, mask).tolist() == [[1.0, 2.0]]
    assert POOLING_MODES["max"](states, mask).tolist() == [[3.0, 4.0]]
    assert POOLING_MODES["last"](states, mask).tolist() == [[3.0, 4.0]]
    assert torch.allclose(
        POOLING_MODES["mean_sqrt_len"](states, mask), torch.tensor([[4.0, 6.0]]) / math.sqrt(2)
    )


def test_low_bit_int8_stays_close(embedder: Embedder) -> None:
    q8 = Embedder(low_bit="sym_int8", device="cpu")
    a, b = np.asarray(embedder.embed(TEXTS[:4])), np.asarray(q8.embed(TEXTS[:4]))
    assert (a * b).sum(1).min() > 0.99
    assert "low_bit='sym_int8'" in repr(q8)


def test_bad_inputs(embedder: Embedder, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="embed_query"):
        embedder.embed("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.embed(["ok", 3])
    with pytest.raises(TypeError, match="str"):
        embedder.embed_query(None)
    with pytest.raises(ValueError, match="batch_size"):
        embedder.embed(["a"], batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        Embedder(dtype="int3")
    with pytest.raises(ModelNotFound, match="does not exist"):
        Embedder(str(tmp_path / "missing" / "model.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        Embedder(str(tmp_path / "empty"))


def test_hub_id_offline_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # these machines have no hub access; make that fast and explicit
    with pytest.raises(ModelNotFound, match="could not fetch embedding model 'someone/no-such-embedder'"):
        Embedder("someone/no-such-embedder")
