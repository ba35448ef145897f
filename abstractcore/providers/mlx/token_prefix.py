"""Token-prefix arithmetic: the common prefix of two prompts, and the forks of a wave.

:func:`plan_forks` groups a wave of queued prompts that share a prefix worth prefilling once
(the engine's cache scheduler defers the followers until the lead holds it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Fork", "common_prefix_length", "plan_forks"]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect with C-level slice compares
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Fork:
    """Requests (indices into the planned list) that share ``length`` leading tokens: the
    lead prefills them once, the followers reuse the lead's cache of them."""

    lead: int
    followers: tuple[int, ...]
    length: int


def plan_forks(
    prompts: Sequence[Sequence[int]],
    covered: Callable[[Sequence[int]], int],
    min_tokens: int = 16,
) -> list[Fork]:
    """Groups of prompts whose shared prefix is worth prefilling once and forking.

    ``covered(prefix)`` says how much of a prefix is cached already. Prompts are sorted so
    those sharing a prefix are adjacent; the split (at the weakest adjacent common prefix)
    that saves the most prefill tokens wins, so 16 prompts on system prompt A and 16 on B
    give two forks rather than one on their common template head.
    """
    n = len(prompts)
    if n < 2:
        return []
    order = sorted(range(n), key=lambda i: list(prompts[i]))
    lcps = [common_prefix_length(prompts[order[j]], prompts[order[j + 1]]) for j in range(n - 1)]

    def best(lo: int, hi: int) -> tuple[int, list[Fork]]:
        if hi <= lo:
            return 0, []
        j = min(range(lo, hi), key=lcps.__getitem__)
        members = order[lo : hi + 1]
        length = min(lcps[j], min(len(prompts[i]) for i in members) - 1)
        gain = length - covered(prompts[members[0]][:length]) if length > 0 else 0
        own = (hi - lo) * gain if gain >= min_tokens else 0
        left, left_forks = best(lo, j)
        right, right_forks = best(j + 1, hi)
        if left + right > own:
            return left + right, left_forks + right_forks
        if own == 0:
            return 0, []
        members = sorted(members)
        return own, [Fork(members[0], tuple(members[1:]), length)]

    return best(0, n - 1)[1]
