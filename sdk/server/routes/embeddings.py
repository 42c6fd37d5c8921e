"""POST /v1/embeddings: sentence embeddings; inputs longer than the embedder's window get 400 (never truncated)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request

from xpullm.server.errors import APIError, from_exception
from xpullm.server.protocol import EmbeddingRequest
from xpullm.server.routes.params import in_thread
from xpullm.server.state import state_of

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """Sentence embeddings; inputs longer than the embedder's window get 400 (never truncated)."""
    engine = state_of(request).embedding_engine(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError.unsupported(
            "input",
            "give a string or a list of strings (token arrays are not accepted: the tokenizers differ)",
        )
    for i, t in enumerate(texts):
        if not t:
            raise APIError.bad_request(
                f"input[{i}]", f"input[{i}] is empty; every input must be a non-empty string"
            )
    if body.dimensions is not None and body.dimensions != engine.dim:
        # Clients such as LightRAG always send the size they were configured with; the native size is a no-op.
        raise APIError.unsupported(
            "dimensions",
            f"this embedder has a fixed size of {engine.dim}; leave dimensions unset or {engine.dim}",
        )
    counts = await in_thread(engine.count_tokens, texts)
    for i, c in enumerate(counts):
        if c > engine.max_tokens:
            raise APIError.bad_request(
                f"input[{i}]",
                f"input[{i}] is {c} tokens but the embedder reads at most {engine.max_tokens}; split it",
                "context_length_exceeded",
            )
    try:
        vectors = await engine.embed(texts)
    except Exception as exc:
        raise from_exception(exc) from exc
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    total = sum(counts)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    import numpy as np

    # base64 of little-endian float32, which is what the OpenAI SDK decodes.
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
