"""Stop strings in streamed text, matched on the text (not on token ids).

A stop string can be tokenized in many ways, so matching token ids (mlx-lm's
``StopSequences``, which the engine uses for EOS) would miss it; text matching holds back any
tail that could start a stop string until the next piece decides. mlx-lm 0.32.2 ships a
text-level matcher too (``TextStateMachine``); this one is kept because it cuts at the
earliest *start* of any stop string, where ``TextStateMachine`` cuts at the earliest *end*
(stops ``"abcd"`` and ``"bc"`` on ``"xabcd"`` give ``"x"`` here and ``"xa"`` there, and the
tests pin the first), and because it must work on every mlx-lm the engine admits, while
``TextStateMachine`` arrived in 0.32 and its neighbours changed between patch releases.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher"]


class StopMatcher:
    """Finds stop strings in streamed text; holds back any tail that could start one."""

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, matched); on a match the text is cut before the stop."""
        buf = self._held + text
        cut = -1
        for s in self._stops:
            i = buf.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self._held = ""
            return buf[:cut], True
        keep = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        if keep:
            self._held = buf[-keep:]
            return buf[:-keep], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        """The held-back text, released when the generation ends without a match."""
        held, self._held = self._held, ""
        return held
