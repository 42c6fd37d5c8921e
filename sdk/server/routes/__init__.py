"""The OpenAI-compatible endpoints, one module per endpoint: `chat` (/v1/chat/completions), `completions`
(/v1/completions), `embeddings` (/v1/embeddings), `models` (/v1/models).

Routes translate the wire protocol to `GenerationParams` (`params`) and talk to the engines only through the seam
in `xpullm.server.engine` (submit, iterate events, cancel). Every sequence is submitted before a response starts,
so a full queue is a 429 and a bad schema a 400, never an error inside a 200 stream. A client that goes away
cancels its sequences at once (`streams`).
"""

from __future__ import annotations

from fastapi import APIRouter

from xpullm.server.routes import chat, completions, embeddings, models
from xpullm.server.state import ServerState

__all__ = ["ServerState", "router"]

router = APIRouter()
for _module in (models, chat, completions, embeddings):
    router.include_router(_module.router)
