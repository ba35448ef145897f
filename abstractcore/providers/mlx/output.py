"""What happens to each generated token: detokenized, checked against stop strings, finished,
delivered.

:class:`OutputProcessor` is the engine's "update from output" stage: the batch and the solo
lane produce (request, token, finish reason) and this turns them into text for the
request's sink. EOS is the only token-level stop (mlx-lm's ``StopSequences`` in the
BatchGenerator; the same rule in the solo lane) and its text is not content; stop strings are
matched on the text (stop_strings.py). Delivery goes through the :class:`Outbox`, flushed
after each stage of a step (so a caller on an event loop is woken once per stage, not once
per token).
"""

from __future__ import annotations

from typing import Any

from .counters import EngineCounters
from .protocol import Outbox, Piece, Sink, TokenScores
from .request_state import RequestState, RequestStatus
from .stop_strings import StopMatcher

__all__ = ["OutputProcessor", "token_scores"]


class OutputProcessor:
    """Token routing and delivery (engine thread only)."""

    def __init__(self, counters: EngineCounters) -> None:
        self.counters = counters
        self.outbox = Outbox()

    def start(self, state: RequestState, detokenizer: Any) -> None:
        """Get ``state`` ready for its first token."""
        state.detokenizer = detokenizer
        if state.job.stop:
            state.stops = StopMatcher(state.job.stop)

    def route(
        self,
        state: RequestState,
        token: int,
        finish: str | None,
        now: float,
        scores: TokenScores | None = None,
    ) -> bool:
        """Deliver one token's text (and its ``scores``, for a request with logprobs); True
        when the request ended."""
        if state.first_token_at is None:
            state.first_token_at = now
        detok = state.detokenizer
        if finish == "stop":  # EOS (the only token-level stop): its text is not content
            self._finish(state, _finalize(detok), "stop", now)
            return True
        state.completion_tokens += 1
        if scores is not None:
            state.scores.append(scores)
        detok.add_token(token)
        text = detok.last_segment
        if finish == "length":
            self._finish(state, text + _finalize(detok), "length", now)
            return True
        stops = state.stops
        if stops is not None:
            text, matched = stops.feed(text)
            if matched:
                self._finish_now(state, text, "stop", now)
                return True
        if text:
            self._emit(state, text)
        return False

    def deliver(self, state: RequestState, item: Any) -> None:
        """Send ``item`` (a Final or an exception) to the request's sink."""
        self.outbox.put(state.sink, item)

    def flush(self) -> list[Sink]:
        """Hand this step's items to their callers; the sinks whose event loop is closed."""
        return self.outbox.flush()

    def _finish(self, state: RequestState, text: str, reason: str, now: float) -> None:
        stops = state.stops
        if stops is not None:
            text, matched = stops.feed(text)
            if matched:
                reason = "stop"
            else:
                text += stops.flush()
        self._finish_now(state, text, reason, now)

    def _finish_now(self, state: RequestState, text: str, reason: str, now: float) -> None:
        if state.held:
            text = "".join(state.held) + text
            state.held.clear()
        state.end(RequestStatus.FINISHED)
        self.counters.finished += 1
        self.deliver(state, state.final(text, reason, now))

    def _emit(self, state: RequestState, text: str) -> None:
        """A piece of text: sent now to a stream, held until the Final for a whole answer."""
        if not state.sink.streaming:
            state.held.append(text)
        elif state.scores:
            self.outbox.put(state.sink, Piece(text, tuple(state.scores)))
            state.scores.clear()
        else:
            self.outbox.put(state.sink, text)

    @staticmethod
    def abandoned(state: RequestState) -> bool:
        """True for a whole-answer request whose event loop closed: nobody will read it (a
        stream finds out when its items are flushed)."""
        loop = state.sink.loop
        return not state.sink.streaming and loop is not None and loop.is_closed()


def _finalize(detok: Any) -> str:
    """The detokenizer's held-back text; a UTF-8 character cut off by the end is dropped."""
    detok.finalize()
    return str(detok.last_segment).rstrip("\ufffd")


def token_scores(logprobs: Any, token: int, k: int) -> TokenScores:
    """``token``'s log-probability in ``logprobs`` (one row, MLX) and the ``k`` best tokens,
    read off the engine thread's arrays."""
    import mlx.core as mx

    chosen = logprobs[token]
    if k <= 0:
        return token, float(chosen.item()), ()
    ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
    values = logprobs[ids]
    order = mx.argsort(-values)
    ids, values = ids[order], values[order]
    mx.eval(chosen, ids, values)
    id_list: list[int] = ids.tolist()  # type: ignore[assignment]
    value_list: list[float] = values.tolist()
    return token, float(chosen.item()), tuple(zip(id_list, value_list))
