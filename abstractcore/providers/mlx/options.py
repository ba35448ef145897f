"""EngineOptions: the MLX engine's settings, defined once for the provider, the engine and
``abstractcore serve``.

Each field's description is the help text of its ``abstractcore serve`` flag
(:func:`add_engine_arguments`), and a bad value is an InvalidRequestError naming the option.
Nothing here imports MLX, so the command line can build its flags without loading it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from ...errors import InvalidRequestError

__all__ = ["EngineOptions", "add_engine_arguments", "engine_options_from_args"]

PositiveInt = Annotated[StrictInt, Field(ge=1)]


class EngineOptions(BaseModel):
    """How the engine batches, queues, caches and which CPU optimizations it runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: PositiveInt = Field(default=32, description="rows decoded together")
    prefill_batch_size: PositiveInt = Field(default=8, description="prompts prefilled together")
    prefill_step_size: PositiveInt = Field(
        default=512, description="prompt tokens per prefill call"
    )
    max_queue: PositiveInt = Field(
        default=1024,
        description="requests waiting for a batch slot before OverloadedError (HTTP 429)",
    )
    queue_timeout_s: Annotated[float, Field(gt=0, strict=True)] | None = Field(
        default=None, description="longest wait for a batch slot, in seconds (default: no limit)"
    )
    prompt_cache_bytes: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None,
        description="one budget for every stored KV cache (default: a tenth of the device's "
        "memory left after the weights, at most 2 GiB; 0 turns prompt caching off)",
    )
    kv_cache_bytes: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None,
        description="KV bytes running requests may reserve together; a request waits until "
        "its prompt + max_output_tokens fit (default: half the device's memory left after "
        "the weights)",
    )
    mlx_cache_limit_bytes: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None,
        description="MLX's buffer cache limit, process-wide (default: a twentieth of the "
        "device's memory left after the weights, at most 1 GiB)",
    )
    prefix_cache: StrictBool = Field(
        default=True, description="share prefixes between requests without a prompt_cache_key"
    )
    share_prefix_across_keys: StrictBool = Field(
        default=False,
        description="let keyed requests share prefixes with everyone (off: reuse is a timing "
        "signal)",
    )
    solo_decode: StrictBool = Field(
        default=True,
        description="decode a request that is alone without the batch machinery, handing it "
        "to the batch when another arrives",
    )
    pad_rows: StrictBool = Field(
        default=True,
        description="on the CPU, pad the rows of the dense products to the row counts the "
        "BLAS was measured to run faster (row_padding.py)",
    )
    fast_cpu_ops: StrictBool = Field(
        default=True,
        description="on the CPU, run attention (decode and prefill) and SwiGLU through "
        "faster formulations (cpu_ops.py), and a decode step's RoPE and RMSNorm in fewer "
        "primitives (cpu_rope_norm.py)",
    )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EngineOptions:
        """Validated options; InvalidRequestError names the first bad one."""
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            name = str(first["loc"][0]) if first["loc"] else "options"
            value = options.get(name)
            raise InvalidRequestError(
                f"{name}: {first['msg']} (got {value!r})", field=name, provider="mlx"
            ) from None

    @property
    def prefill_rows(self) -> int:
        """Prompts prefilled together (never more than are decoded together)."""
        return min(self.prefill_batch_size, self.max_batch_size)


def add_engine_arguments(group: argparse._ArgumentGroup) -> None:
    """One ``--flag`` per option (``--no-flag`` for the switches), defaults left unset so
    only what the user gives reaches the provider."""
    for name, f in EngineOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        shown = "" if f.default is None else f" (default: {f.default})"
        help_text = f"{f.description}{shown}".replace("%", "%%")
        if f.annotation is bool:
            group.add_argument(
                flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                help=help_text,
            )  # fmt: skip
        else:
            kind = float if name.endswith("_s") else int
            group.add_argument(flag, dest=name, default=None, type=kind, help=help_text)


def engine_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options the user gave on the command line, checked (InvalidRequestError
    naming the flag's option) before anything loads."""
    given = {
        name: getattr(args, name)
        for name in EngineOptions.model_fields
        if getattr(args, name, None) is not None
    }
    EngineOptions.from_options(given)
    return given
