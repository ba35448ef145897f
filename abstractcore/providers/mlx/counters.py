"""The engine's counters, read by ``MLXProvider.stats()`` from any thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EngineCounters"]


@dataclass(slots=True)
class EngineCounters:
    """Engine-thread counters; other threads read them without a lock (ints and floats)."""

    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    decode_steps: int = 0
    decode_rows: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    model_step_s: float = 0.0  # in model steps: BatchGenerator.next() or a solo step
    busy_s: float = 0.0
    solo_requests: int = 0
    solo_handovers: int = 0

    def as_dict(self, *, active: int, queued: int, wall_s: float) -> dict[str, Any]:
        """The public stats: counters plus derived rates."""
        steps = self.decode_steps
        return {
            "active": active,
            "queued": queued,
            "submitted": self.submitted,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "rejected": self.rejected,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "steps": self.steps,
            "decode_steps": steps,
            "mean_batch_size": self.decode_rows / steps if steps else 0.0,
            "prefill_tok_s": self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0,
            "decode_tok_s": self.decode_rows / self.decode_s if self.decode_s else 0.0,
            "model_step_s": self.model_step_s,
            "busy_s": self.busy_s,
            "solo_requests": self.solo_requests,
            "solo_handovers": self.solo_handovers,
            "wall_s": wall_s,
        }
