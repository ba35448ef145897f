"""What the engine delivers (text pieces, one Final) as the provider's chunks and responses.

Tool calls are read out of the text here, on the caller's thread (tool_format.py), so the
engine stays a text generator: content streams until a call starts, and a call arrives as
tool-call deltas. Token scores become :class:`~abstractcore.types.TokenLogprob` with the
token's exact bytes, read from llguidance's view of the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...types import (
    FinishReason,
    GenerateResponse,
    StreamChunk,
    Timing,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from .protocol import Final, Piece, TokenScores
from .tool_format import ToolCallParser

__all__ = ["TokenTexts", "Answer"]


class TokenTexts:
    """Token ids as text and bytes (for logprobs), with a cache (any thread)."""

    def __init__(self, llg_tokenizer: Any) -> None:
        self._tokenizer = llg_tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token: int) -> tuple[str, list[int]]:
        """``(text, bytes)`` of one token (text with U+FFFD where it cuts a character)."""
        got = self._cache.get(token)
        if got is None:
            raw = bytes(self._tokenizer.decode_bytes([token]))
            got = self._cache[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return got

    def logprobs(self, scores: Sequence[TokenScores]) -> list[TokenLogprob]:
        """The engine's scores as TokenLogprob entries."""
        out = []
        for token, logprob, top in scores:
            text, raw = self.get(token)
            alternatives = []
            for alt, alt_logprob in top:
                alt_text, alt_raw = self.get(alt)
                alternatives.append(TopLogprob(token=alt_text, logprob=alt_logprob, bytes=alt_raw))
            out.append(
                TokenLogprob(token=text, logprob=logprob, bytes=raw, top_logprobs=alternatives)
            )
        return out


class Answer:
    """One request's items turned into chunks (streams) or a response (whole answers)."""

    def __init__(
        self,
        model: str,
        provider: str,
        parser: ToolCallParser | None,
        texts: TokenTexts | None,
    ) -> None:
        self._model = model
        self._provider = provider
        self._parser = parser
        self._texts = texts

    def chunk(self, item: str | Piece) -> StreamChunk | None:
        """A streamed piece as a chunk (None when it holds nothing to send yet)."""
        text, scores = (item, ()) if isinstance(item, str) else (item.text, item.scores)
        deltas: list[ToolCallDelta] = []
        if self._parser is not None:
            text, deltas = self._parser.feed(text)
        logprobs = self._logprobs(scores)
        if not text and not deltas and not logprobs:
            return None
        return StreamChunk(content=text, tool_call_deltas=deltas, logprobs=logprobs)

    def last_chunk(self, final: Final) -> StreamChunk:
        """The Final as the stream's last chunk."""
        text, deltas = self._last(final.text)
        return StreamChunk(
            content=text,
            finish_reason=self._finish(final),
            usage=_usage(final),
            timing=_timing(final),
            model=self._model,
            provider=self._provider,
            tool_call_deltas=deltas,
            logprobs=self._logprobs(final.scores),
        )

    def response(self, parts: Sequence[str], final: Final) -> GenerateResponse:
        """A whole answer (pieces, if any, then the Final)."""
        text, deltas = self._last("".join(parts) + final.text)
        calls = [
            ToolCall.model_validate({"id": d.id, "name": d.name or "", "arguments": d.arguments})
            for d in deltas
        ]
        return GenerateResponse(
            content=text,
            finish_reason=self._finish(final),
            usage=_usage(final),
            timing=_timing(final),
            model=self._model,
            provider=self._provider,
            tool_calls=calls,
            logprobs=self._logprobs(final.scores),
        )

    def _last(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """The answer's last text through the tool-call parser, which then gives up what it
        held back (content, or a call the answer ended inside)."""
        if self._parser is None:
            return text, []
        text, deltas = self._parser.feed(text)
        rest, more = self._parser.finish()
        return text + rest, deltas + more

    def _finish(self, final: Final) -> FinishReason:
        reason: FinishReason = final.finish_reason  # type: ignore[assignment]
        if reason == "stop" and self._parser is not None and self._parser.calls:
            return "tool_calls"
        return reason

    def _logprobs(self, scores: Sequence[TokenScores]) -> list[TokenLogprob] | None:
        if not scores or self._texts is None:
            return None
        return self._texts.logprobs(scores)


def _usage(final: Final) -> Usage:
    return Usage(
        prompt_tokens=final.prompt_tokens,
        completion_tokens=final.completion_tokens,
        cached_tokens=final.cached_tokens,
    )


def _timing(final: Final) -> Timing:
    return Timing(
        queued_s=final.queued_s,
        ttft_s=final.ttft_s,
        total_s=final.total_s,
        decode_tokens_per_s=final.decode_tokens_per_s,
    )
