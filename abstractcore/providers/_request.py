"""Request building: the public keyword arguments validated into a GenerationRequest.

Every check names the offending field (``InvalidRequestError.field``), so a bad argument
fails at the call site with the same error on every provider. What the chosen backend
cannot do is refused here too (:class:`~.features.Features`), before any I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidRequestError
from ..request import GenerationRequest, ToolChoice
from ..structured import response_format_from
from ..tools.definition import Tool, normalize_tools
from ..types import Message
from .features import MAX_TOP_LOGPROBS, Features

__all__ = ["DEFAULTABLE", "MessageInput", "RequestBuilder"]

MessageInput = Message | Mapping[str, Any]

#: Per-call parameters a provider instance may also hold as defaults
#: (``create_llm(..., temperature=0)``).
DEFAULTABLE = (
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "prompt_cache_key",
    "timeout",
)


class RequestBuilder:
    """Validates one provider's calls: its defaults, its extra options, its features."""

    def __init__(
        self,
        provider: str,
        defaults: Mapping[str, Any],
        extra_options: frozenset[str],
        features: Features,
    ) -> None:
        self.provider = provider
        self.defaults = dict(defaults)
        self.extra_options = extra_options
        self.features = features

    def build(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageInput] | None = None,
        system_prompt: str | None = None,
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        prompt_cache_key: str | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool | None = None,
        response_model: Any = None,
        response_format: Any = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        timeout: float | None = None,
        **extra: Any,
    ) -> GenerationRequest:
        """The validated request (InvalidRequestError / UnsupportedFeatureError otherwise)."""
        given = {
            "max_output_tokens": max_output_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "seed": seed,
            "stop": stop,
            "prompt_cache_key": prompt_cache_key,
            "timeout": timeout,
        }
        p = {k: (v if v is not None else self.defaults.get(k)) for k, v in given.items()}
        unknown = sorted(set(extra) - self.extra_options)
        if unknown:
            accepted = ", ".join(sorted(self.extra_options)) or "none"
            raise InvalidRequestError(
                f"unexpected argument(s) for provider {self.provider!r}: "
                f"{', '.join(unknown)} (provider-specific arguments accepted: {accepted})",
                field=unknown[0],
            )
        offered = normalize_tools(tools)
        want_logprobs, top = _check_logprobs(logprobs, top_logprobs)
        request = GenerationRequest(
            messages=_name_tool_results(_build_messages(prompt, messages, system_prompt)),
            max_output_tokens=_check_int(p["max_output_tokens"], "max_output_tokens", minimum=1),
            temperature=_check_float(p["temperature"], "temperature", minimum=0.0),
            top_p=_check_top_p(p["top_p"]),
            top_k=_check_int(p["top_k"], "top_k", minimum=0),
            seed=_check_int(p["seed"], "seed", minimum=None),
            stop=_check_stop(p["stop"]),
            prompt_cache_key=_check_key(p["prompt_cache_key"]),
            timeout=_check_float(p["timeout"], "timeout", minimum=0.0, exclusive=True),
            tools=offered,
            tool_choice=_check_tool_choice(tool_choice, offered),
            parallel_tool_calls=_check_bool(parallel_tool_calls, "parallel_tool_calls"),
            response_format=response_format_from(response_model, response_format),
            logprobs=want_logprobs,
            top_logprobs=top,
            extra=extra,
        )
        self.features.check(request, self.provider)
        return request


# ---------------------------------------------------------------------- field checks
def _build_messages(
    prompt: str | None,
    messages: Sequence[MessageInput] | None,
    system_prompt: str | None,
) -> list[Message]:
    if (prompt is None) == (messages is None):
        raise InvalidRequestError(
            "pass exactly one of prompt or messages",
            field="prompt" if prompt is None else "messages",
        )
    out: list[Message] = []
    if system_prompt is not None:
        if not isinstance(system_prompt, str):
            raise InvalidRequestError("system_prompt must be a string", field="system_prompt")
        out.append(Message(role="system", content=system_prompt))
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidRequestError(
                f"prompt must be a string, got {type(prompt).__name__}", field="prompt"
            )
        if not prompt:
            raise InvalidRequestError("prompt must not be empty", field="prompt")
        out.append(Message(role="user", content=prompt))
        return out
    assert messages is not None
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError("messages must be a list of messages", field="messages")
    if not messages:
        raise InvalidRequestError("messages must not be empty", field="messages")
    for i, m in enumerate(messages):
        try:
            out.append(m if isinstance(m, Message) else Message.model_validate(dict(m)))
        except (ValidationError, TypeError, ValueError) as exc:
            loc = ""
            if isinstance(exc, ValidationError) and exc.errors():
                loc = "." + ".".join(str(x) for x in exc.errors()[0]["loc"])
            raise InvalidRequestError(
                f"messages[{i}] is not a valid message: {exc}", field=f"messages[{i}]{loc}"
            ) from exc
    if all(m.role == "system" for m in out):
        raise InvalidRequestError(
            "messages must contain at least one non-system message", field="messages"
        )
    return out


def _check_int(value: Any, field: str, *, minimum: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{field} must be an integer, got {type(value).__name__}", field=field
        )
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"{field} must be >= {minimum}, got {value}", field=field)
    return value


def _check_float(
    value: Any, field: str, *, minimum: float, exclusive: bool = False
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(
            f"{field} must be a number, got {type(value).__name__}", field=field
        )
    v = float(value)
    if not math.isfinite(v) or v < minimum or (exclusive and v == minimum):
        op = ">" if exclusive else ">="
        raise InvalidRequestError(
            f"{field} must be finite and {op} {minimum}, got {value}", field=field
        )
    return v


def _check_top_p(value: Any) -> float | None:
    v = _check_float(value, "top_p", minimum=0.0, exclusive=True)
    if v is not None and v > 1.0:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {value}", field="top_p")
    return v


def _check_stop(value: Any) -> list[str]:
    if value is None:
        return []
    items: Iterable[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise InvalidRequestError("stop must be a string or a list of strings", field="stop")
    out: list[str] = []
    for s in items:
        if not isinstance(s, str) or not s:
            raise InvalidRequestError("stop entries must be non-empty strings", field="stop")
        out.append(s)
    return out


def _check_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(
            "prompt_cache_key must be a non-empty string", field="prompt_cache_key"
        )
    return value


def _check_bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidRequestError(f"{field} must be True or False, got {value!r}", field=field)


def _check_logprobs(logprobs: Any, top_logprobs: Any) -> tuple[bool, int | None]:
    want = bool(_check_bool(logprobs, "logprobs"))
    top = _check_int(top_logprobs, "top_logprobs", minimum=0)
    if top is not None and top > MAX_TOP_LOGPROBS:
        raise InvalidRequestError(
            f"top_logprobs must be in 0-{MAX_TOP_LOGPROBS}, got {top}", field="top_logprobs"
        )
    if top is not None and not want:
        raise InvalidRequestError("top_logprobs needs logprobs=True", field="top_logprobs")
    return want, (top if top is not None else 0) if want else None


def _check_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice | None:
    """``"auto"``, ``"none"``, ``"required"`` or a tool name; OpenAI's
    ``{"type": "function", "function": {"name": ...}}`` and Anthropic's ``{"type": "tool",
    "name": ...}`` (``"any"`` is ``"required"``) are accepted too."""
    if value is None:
        return None
    name: Any = value
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "function" and isinstance(value.get("function"), Mapping):
            name = value["function"].get("name")
        elif kind == "tool":
            name = value.get("name")
        elif kind in ("auto", "none"):
            name = kind
        elif kind == "any":
            name = "required"
        else:
            raise InvalidRequestError(
                f"tool_choice {dict(value)!r} is not a recognised shape", field="tool_choice"
            )
        if not isinstance(name, str):
            raise InvalidRequestError("tool_choice names no tool", field="tool_choice")
    elif not isinstance(value, str):
        raise InvalidRequestError(
            "tool_choice must be 'auto', 'none', 'required' or a tool name", field="tool_choice"
        )
    if name in ("auto", "none"):
        return str(name)
    if not tools:
        raise InvalidRequestError(f"tool_choice={name!r} needs tools", field="tool_choice")
    if name == "required":
        return "required"
    if all(t.name != name for t in tools):
        offered = ", ".join(t.name for t in tools)
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not among the tools ({offered})",
            field="tool_choice",
        )
    return str(name)


def _name_tool_results(messages: list[Message]) -> list[Message]:
    """Tool results without a ``name`` get the name of the call they answer."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for m in messages:
        for call in m.tool_calls:
            names[call.id] = call.name
        if m.role == "tool" and m.name is None and m.tool_call_id in names:
            m = m.model_copy(update={"name": names[m.tool_call_id]})
        out.append(m)
    return out
