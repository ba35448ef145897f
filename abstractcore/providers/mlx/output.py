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
from .protocol import Outbox, Sink
from .request_state import RequestState, RequestStatus
from .stop_strings import StopMatcher

__all__ = ["OutputProcessor"]


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

    def route(self, state: RequestState, token: int, finish: str | None, now: float) -> bool:
        """Deliver one token's text; True when the request ended."""
        if state.first_token_at is None:
            state.first_token_at = now
        detok = state.detokenizer
        if finish == "stop":  # EOS (the only token-level stop): its text is not content
            self._finish(state, _finalize(detok), "stop", now)
            return True
        state.completion_tokens += 1
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
        if state.sink.streaming:
            self.outbox.put(state.sink, text)
        else:
            state.held.append(text)

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
