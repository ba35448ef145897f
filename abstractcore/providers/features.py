"""What a provider's backend can do beyond plain text, checked before any request is sent.

Every provider declares its :class:`Features`; a request that asks for something its
backend cannot do fails with :class:`~abstractcore.errors.UnsupportedFeatureError` naming
the field, instead of the parameter being dropped (the complaint peers' issue trackers hear
most often: "structured output returns an empty output, not even an error").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedFeatureError
from ..request import GenerationRequest

__all__ = ["MAX_TOP_LOGPROBS", "Features"]

#: The largest ``top_logprobs`` any supported API accepts (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Features:
    """One backend's capabilities. ``tool_choice`` lists the choices it can enforce
    (``"named"`` stands for a tool's name); ``parallel_tool_calls`` whether it can be told
    to make at most one call; ``why`` is added to every refusal."""

    tools: bool = False
    tool_choice: frozenset[str] = frozenset({"auto", "none", "required", "named"})
    parallel_tool_calls: bool = False
    structured_output: bool = False
    logprobs: bool = False
    why: str = ""

    def check(self, request: GenerationRequest, provider: str) -> None:
        """Raise UnsupportedFeatureError for the first field ``request`` sets that this
        backend cannot honour."""
        if request.tools and not self.tools:
            self._refuse("tools", "tool calling", provider)
        if request.tool_choice not in (None, "auto", "none") and not self.tools:
            self._refuse("tool_choice", "tool calling", provider)
        choice = request.tool_choice
        if request.tools and choice is not None:
            kind = choice if choice in ("auto", "none", "required") else "named"
            if kind not in self.tool_choice:
                what = f"tool_choice={choice!r}" if kind != "named" else "a named tool_choice"
                self._refuse("tool_choice", what, provider)
        if request.parallel_tool_calls is False and request.tools and not self.parallel_tool_calls:
            self._refuse("parallel_tool_calls", "parallel_tool_calls=False", provider)
        fmt = request.response_format
        if fmt is not None and not self.structured_output:
            field = "response_model" if fmt.model is not None else "response_format"
            self._refuse(field, "structured output", provider)
        if request.logprobs and not self.logprobs:
            self._refuse("logprobs", "logprobs", provider)

    def _refuse(self, field: str, what: str, provider: str) -> None:
        why = f" ({self.why})" if self.why else ""
        raise UnsupportedFeatureError(
            f"{what} is not supported by the {provider} provider{why}",
            field=field,
            provider=provider,
        )
