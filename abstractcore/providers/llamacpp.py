"""llama.cpp's ``llama-server``: Chat Completions, plus llama.cpp's own request fields.

The server speaks OpenAI's wire format (openai.py), with three differences this preset
handles so that an app can switch to it without changing its calls:

- **JSON schemas** go in llama.cpp's own ``json_schema`` field, which every llama-server
  release reads and turns into a grammar; ``response_format: json_schema`` arrived later and
  older builds ignore it. ``json_object`` keeps OpenAI's shape, which llama-server reads. A
  GBNF grammar of one's own goes in ``extra_body={"grammar": "..."}``.
- **Prompt caching**: llama-server has no ``prompt_cache_key``; it keeps each slot's last
  prompt in its KV cache and gives a request the slot whose prompt shares the most with it
  (``cache_prompt``, sent as true). A request's key still travels in the
  ``X-Prompt-Cache-Key`` header, which a proxy in front of several servers routes on
  (docs/scale-out.md), so one conversation keeps reaching the server that holds its cache.
- **Base URL**: ``http://127.0.0.1:8080/v1`` (llama-server's default port) or
  ``$LLAMACPP_BASE_URL``; no key unless the server was started with ``--api-key``.

Tool calls need the server started with ``--jinja`` (its chat-template tool support); a server
without it answers tool requests with an error, which reaches the caller as one.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..request import GenerationRequest
from .openai import LocalServerProvider, OpenAIWire

__all__ = ["LLAMACPP_BASE_URL", "LlamaCppProvider", "LlamaCppWire"]

LLAMACPP_BASE_URL = "http://127.0.0.1:8080/v1"


class LlamaCppWire(OpenAIWire):
    """OpenAI's body with llama.cpp's schema and prompt-cache fields."""

    def build_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        body = super().build_body(request, stream=stream)
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            del body["response_format"]
            body.setdefault("json_schema", fmt["json_schema"]["schema"])
        body.pop("prompt_cache_key", None)  # unknown to llama.cpp: it caches by slot
        body.setdefault("cache_prompt", True)
        return body


class LlamaCppProvider(LocalServerProvider):
    """llama.cpp's ``llama-server`` (default http://127.0.0.1:8080/v1); no key needed."""

    provider_name: ClassVar[str] = "llamacpp"
    wire_class: ClassVar[type[OpenAIWire]] = LlamaCppWire
    default_base_url: ClassVar[str] = LLAMACPP_BASE_URL
    base_url_env: ClassVar[str | None] = "LLAMACPP_BASE_URL"
    api_key_env: ClassVar[str | None] = "LLAMACPP_API_KEY"
