"""GET /v1/models: the ids clients may pass as `model`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from xpullm.server.state import state_of

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served models."""
    st = state_of(request)
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": st.created, "owned_by": "xpullm"} for m in st.model_ids()
        ],
    }
