"""From a validated request to the engine's Job, on the caller's thread.

The chat template renders the messages (and the tools, tool_format.py) into token ids; the
context window and the KV memory budget (memory_plan.py) are checked; structured output and
forced tool calls are compiled to a grammar (grammar.py); what the model cannot be made to do
is refused here, naming the field, before the request takes a batch slot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ContextLengthError, InvalidRequestError, UnsupportedFeatureError
from ...request import GenerationRequest
from ...tools.definition import Tool
from .grammar import GrammarCompiler, RowGrammar
from .memory_plan import MemoryPlan
from .protocol import Job
from .sampling import SamplingParams
from .tool_format import ToolCallParser, ToolFormat, render_messages, tool_format_for

__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "JobBuilder", "Prepared"]

#: Output cap when a request gives no max_output_tokens (clipped to the context left).
DEFAULT_MAX_OUTPUT_TOKENS = 1024

_PROVIDER = "mlx"


@dataclass
class Prepared:
    """A request made ready: its Job, and the tools whose calls its answer may hold."""

    job: Job
    tools: list[Tool] = field(default_factory=list)
    tool_format: ToolFormat | None = None

    def tool_parser(self) -> ToolCallParser | None:
        """A parser for this answer's tool calls (None when no tools were offered)."""
        if not self.tools or self.tool_format is None:
            return None
        return ToolCallParser(self.tool_format, self.tools)


class JobBuilder:
    """Builds the Jobs of one provider (any thread; the tokenizer is used under a lock)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        model_dir: Path,
        context_length: int | None,
        vocab_size: int,
        memory: MemoryPlan | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        self._context_length = context_length
        self._memory = memory
        eos = [int(t) for t in tokenizer.eos_token_ids]
        self.grammars = GrammarCompiler(model_dir / "tokenizer.json", eos, vocab_size)
        self._tool_format: ToolFormat | None = None

    @property
    def tool_format(self) -> ToolFormat:
        """How this model writes tool calls (found on first use)."""
        if self._tool_format is None:
            self._tool_format = tool_format_for(self._tokenizer)
        return self._tool_format

    def encode(self, request: GenerationRequest, tools: list[Tool]) -> list[int]:
        """The prompt's token ids (the tools rendered as the model's format says)."""
        has_calls = any(m.tool_calls for m in request.messages)
        fmt = self.tool_format if (tools or has_calls) else None
        msgs, extra = render_messages(request.messages, tools, fmt)
        tok = self._tokenizer
        with self._lock:
            if getattr(tok, "chat_template", None) or getattr(tok, "_chat_template", None):
                ids = tok.apply_chat_template(msgs, add_generation_prompt=True, **extra)
            else:
                text = "\n\n".join(m["content"] for m in msgs)
                ids = tok.encode(text, add_special_tokens=True)
        return [int(i) for i in ids]

    def build(self, request: GenerationRequest) -> Prepared:
        """The Job for ``request`` (InvalidRequestError / UnsupportedFeatureError / Context-
        LengthError naming the field otherwise)."""
        min_p = _check_min_p(request.extra.get("min_p"))  # extras are limited to extra_options
        tools = [] if request.tool_choice == "none" else list(request.tools)
        grammar = self._grammar(request, tools)
        tokens = self.encode(request, tools)
        max_tokens = self._max_tokens(len(tokens), request.max_output_tokens)
        # Refused here, before it is queued, when its KV cache could never fit.
        kv_bytes = 0 if self._memory is None else self._memory.check(len(tokens), max_tokens)
        sampling = SamplingParams(
            temperature=request.temperature or 0.0,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            min_p=min_p,
        )
        job = Job(
            prompt_tokens=tokens,
            max_tokens=max_tokens,
            sampling=sampling,
            seed=request.seed,
            stop=tuple(request.stop),
            prompt_cache_key=request.prompt_cache_key,
            grammar=grammar,
            top_logprobs=request.top_logprobs if request.logprobs else None,
            kv_bytes=kv_bytes,
        )
        return Prepared(job, tools, self.tool_format if tools else None)

    def _grammar(self, request: GenerationRequest, tools: list[Tool]) -> RowGrammar | None:
        fmt = request.response_format
        choice = request.tool_choice
        forced = bool(tools) and choice not in (None, "auto", "none")
        if fmt is not None:
            where = "response_model" if fmt.model is not None else "response_format"
            if tools:
                raise UnsupportedFeatureError(
                    "structured output together with tools is not supported by the mlx "
                    "provider yet (a grammar would have to allow both answers)",
                    field=where,
                    provider=_PROVIDER,
                )
            return self.grammars.for_format(fmt, where)
        if tools and request.parallel_tool_calls is False and not forced:
            raise UnsupportedFeatureError(
                "parallel_tool_calls=False is enforced by a grammar, so the mlx provider "
                "takes it only with tool_choice='required' or a tool's name",
                field="parallel_tool_calls",
                provider=_PROVIDER,
            )
        if not forced:
            return None
        tool_format = self.tool_format
        if not tool_format.json_calls:
            raise UnsupportedFeatureError(
                f"tool_choice={choice!r} needs a grammar of the model's tool-call format, "
                f"which the mlx provider has only for JSON calls ({tool_format.start!r} ...)",
                field="tool_choice",
                provider=_PROVIDER,
            )
        allowed = tools if choice == "required" else [t for t in tools if t.name == choice]
        return self.grammars.for_tool_calls(
            allowed,
            start=tool_format.start,
            end=tool_format.end or "",
            parallel=request.parallel_tool_calls is not False,
        )

    def _max_tokens(self, n: int, requested: int | None) -> int:
        if n == 0:
            raise InvalidRequestError(
                "the prompt encodes to no tokens", field="prompt", provider=_PROVIDER
            )
        ctx = self._context_length
        if ctx is None:
            return DEFAULT_MAX_OUTPUT_TOKENS if requested is None else requested
        room = ctx - n
        if room <= 0:
            raise ContextLengthError(
                f"the prompt is {n} tokens; the model's context window is {ctx} tokens",
                field="messages",
                provider=_PROVIDER,
            )
        if requested is None:
            return min(DEFAULT_MAX_OUTPUT_TOKENS, room)
        if requested > room:
            raise ContextLengthError(
                f"the prompt ({n} tokens) plus max_output_tokens ({requested}) exceeds "
                f"the model's context window of {ctx} tokens",
                field="max_output_tokens",
                provider=_PROVIDER,
            )
        return requested


def _check_min_p(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidRequestError(
            f"min_p must be a number in [0, 1], got {value!r}", field="min_p", provider=_PROVIDER
        )
    return float(value)
