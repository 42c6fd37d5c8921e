"""langchain-tests' standard suites against the packaged default model (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).

Every xfail below carries its reason and is listed in docs/integrations.md's capability table.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from xpullm.integrations.langchain import ChatXPU, XPUEmbeddings

# langchain-tests ships `async def` tests without markers; a module mark runs them on pytest-asyncio's loop.
pytestmark = pytest.mark.asyncio

# The chat model runs with its default parameters (what a user gets); only the suite's own `max_tokens` is lowered
# to keep free-text answers short on 2 CPU cores (constrained JSON keeps its own default budget).

XFAIL_AUTO_TOOL = pytest.mark.xfail(
    reason="SmolLM2-135M does not choose to call a tool unprompted (tool_choice='auto'); forced calls work",
    strict=True,
)


class _ChatConfig:
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = {**super().standard_chat_model_params, "max_tokens": 12}  # type: ignore[misc]
        # The unit suite adds api_key="test" for hosted providers; ChatXPU rejects unknown arguments (a local
        # model has no key, and a silently dropped argument is a bug), so it is left out here.
        params.pop("api_key", None)
        return params

    @property
    def chat_model_class(self) -> type[ChatXPU]:
        return ChatXPU

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # Text-only model: images, audio, PDFs and video are off (the suite's defaults, stated for the reader).
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False


class TestChatXPUUnit(_ChatConfig, ChatModelUnitTests):
    pass


class TestChatXPUIntegration(_ChatConfig, ChatModelIntegrationTests):
    @XFAIL_AUTO_TOOL
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)


class TestXPUEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[XPUEmbeddings]:
        return XPUEmbeddings


class TestXPUEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[XPUEmbeddings]:
        return XPUEmbeddings
