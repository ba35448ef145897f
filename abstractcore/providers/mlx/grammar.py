"""Grammar-constrained decoding: JSON schemas and tool-call formats compiled with llguidance.

:class:`GrammarCompiler` turns a request's structured output or forced tool call into an
llguidance grammar, checks it (an invalid or unsatisfiable schema, or a grammar with no valid
first token, is an InvalidRequestError naming the field, raised in the caller's thread
before the request takes a batch slot) and caches the compiled matcher by grammar text; each
request gets a :class:`RowGrammar` holding its own copy of the matcher (``deep_copy``: the
compiled lexer is shared, the parse state is the request's).

A :class:`RowGrammar` is a logits processor in mlx-lm's sense (``processor(tokens, logits)``),
so it rides along with its request through ``BatchGenerator.insert(logits_processors=...)``
and mlx-lm keeps it aligned as rows join and leave; compat.py's batched step recognises it
and masks all constrained rows of a step at once. Only the engine thread calls it after the
request is submitted.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import InvalidRequestError, UnsupportedFeatureError

if TYPE_CHECKING:
    from ...structured import ResponseFormat
    from ...tools.definition import Tool

__all__ = ["GrammarCompiler", "RowGrammar"]

#: JSON as models write it without a grammar's help: no whitespace between tokens. A schema's
#: own ``x-guidance`` options (llguidance's) override this.
_JSON_OPTIONS: Any = {"whitespace_flexible": False}
#: Compiled grammars kept per provider (a schema per endpoint is the common case).
_CACHE_SIZE = 256


class RowGrammar:
    """One request's grammar state: which tokens may come next, advanced by what came.

    Called once per generated token. Each call first consumes the token the previous call
    let through (the last entry of ``tokens``), then narrows the logits; a matcher that fails
    (it should not, since only allowed tokens are sampled) is recorded in :attr:`error` and
    lets only EOS through, so the request ends and fails alone.
    """

    #: compat.py's batched step masks rows whose processors carry this flag together.
    batched_mask = True

    def __init__(self, matcher: Any, eos: Sequence[int], vocab: int) -> None:
        import numpy as np

        self._matcher = matcher
        self._eos = list(eos)
        self._calls = 0
        self.error: str | None = None
        self._own = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)  # for __call__

    def observe(self, token: int) -> None:
        """The token sampled after the previous mask (ignored before the first mask: that
        call's input is the prompt's last token)."""
        self._calls += 1
        if self._calls == 1 or self.error is not None:
            return
        if not self._matcher.consume_token(int(token)) or self._matcher.is_error():
            self.error = self._matcher.get_error() or f"token {token} was not allowed"

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed-token bitmask (``vocab / 32`` int32 words) into row ``row`` of
        ``bitmask`` (numpy int32, ``[rows, vocab / 32]``), in place."""
        import numpy as np

        if self.error is None and not self._matcher.is_error():
            from llguidance.numpy import fill_next_token_bitmask

            fill_next_token_bitmask(self._matcher, bitmask, row)
            if self._matcher.is_error():
                self.error = self._matcher.get_error()
        if self.error is not None:  # only EOS: the request ends and is failed
            words = bitmask[row].view(np.uint32)  # bit 31 set is a negative int32
            words[:] = 0
            for t in self._eos:
                words[t // 32] |= np.uint32(1 << (t % 32))

    def __call__(self, tokens: Any, logits: Any) -> Any:
        """mlx-lm's logits-processor protocol (one row): consume, then mask."""
        import mlx.core as mx

        last = tokens[-1] if len(tokens) else None
        self.observe(0 if last is None else int(last.item() if hasattr(last, "item") else last))
        self.fill(self._own, 0)
        return mx.where(allowed_tokens(self._own, logits.shape[-1]), logits, -mx.inf)


def allowed_tokens(words: Any, vocab: int) -> Any:
    """Bitmask rows (numpy int32, ``[rows, vocab / 32]``) as a boolean MLX array
    ``[rows, vocab]``."""
    import mlx.core as mx

    bits = mx.arange(32, dtype=mx.int32)
    w = mx.array(words)
    return ((w[:, :, None] >> bits) & 1).reshape(w.shape[0], -1)[:, :vocab].astype(mx.bool_)


class GrammarCompiler:
    """Compiles and caches the grammars of one model's tokenizer (any thread)."""

    def __init__(self, tokenizer_json: Path, eos: Sequence[int], vocab: int) -> None:
        self._tokenizer_json = tokenizer_json
        self.eos = sorted(int(t) for t in eos)
        self.vocab = vocab
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._compiles = 0
        self._hits = 0
        self._compile_s = 0.0

    def llg_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary, read from the model's ``tokenizer.json`` (the
        Hugging Face fast-tokenizer file every converted model directory holds). Building it
        reads the whole vocabulary (~0.2 s for SmolLM2): once, on first use."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance

                try:
                    text = self._tokenizer_json.read_text(encoding="utf-8")
                except OSError as exc:
                    raise UnsupportedFeatureError(
                        f"grammar-constrained decoding needs the model's tokenizer.json "
                        f"({self._tokenizer_json}): {exc}",
                        field="response_format",
                        provider="mlx",
                    ) from None
                self._tokenizer = llguidance.LLTokenizer(
                    text, n_vocab=self.vocab, eos_token=self.eos
                )
            return self._tokenizer

    # ------------------------------------------------------------------ grammars
    def for_format(self, fmt: ResponseFormat, field: str) -> RowGrammar:
        """The grammar of a structured-output request (``field`` names it in errors)."""
        import llguidance

        from ...structured import closed_schema

        schema = fmt.json_schema if fmt.kind == "json_schema" else None
        if schema is None:
            schema = {"type": "object"}
        elif fmt.model is not None or fmt.strict:
            schema = closed_schema(schema)  # a model's fields, no invented extras
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise InvalidRequestError(f"{field}: {exc}", field=field, provider="mlx") from None
        return self._row(grammar, field)

    def for_tool_calls(
        self, tools: Sequence[Tool], *, start: str, end: str, parallel: bool
    ) -> RowGrammar:
        """The grammar of a forced call (``tool_choice`` ``"required"`` or a name): one (or,
        when ``parallel``, several) ``start {"name": ..., "arguments": {...}} end`` blocks,
        each a valid call of one of ``tools``."""
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        call = f"{_lark_string(start + chr(10))} json_call {_lark_string(chr(10) + end)}"
        rule = f"({call})+" if parallel else call
        json_call = json.dumps({**schema, "x-guidance": _JSON_OPTIONS})
        lark = f"start: {rule}\njson_call: %json {json_call}\n"
        return self._row(lark, "tools")

    def _row(self, grammar: str, field: str) -> RowGrammar:
        import llguidance

        tokenizer = self.llg_tokenizer()
        with self._lock:
            template = self._cache.get(grammar)
            if template is None:
                began = time.perf_counter()
                self._compiles += 1
                template = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
                if template.is_error():
                    raise InvalidRequestError(
                        f"{field}: cannot be compiled to a grammar: {template.get_error()}",
                        field=field,
                        provider="mlx",
                    )
                _check_first_token(template, field, self.vocab)  # also builds the lexer
                self._compile_s += time.perf_counter() - began
                self._cache[grammar] = template
                if len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
            else:
                self._hits += 1
                self._cache.move_to_end(grammar)
            matcher = template.deep_copy()
        return RowGrammar(matcher, self.eos, self.vocab)

    def stats(self) -> dict[str, Any]:
        """cached (grammars held), compiles (cache misses that compiled, failures included),
        cache_hits, compile_s (seconds spent in successful compiles)."""
        with self._lock:
            return {
                "cached": len(self._cache),
                "compiles": self._compiles,
                "cache_hits": self._hits,
                "compile_s": round(self._compile_s, 4),
            }


def _check_first_token(matcher: Any, field: str, vocab: int) -> None:
    import numpy as np
    from llguidance.numpy import fill_next_token_bitmask

    words = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)
    probe = matcher.deep_copy()
    fill_next_token_bitmask(probe, words, 0)
    if probe.is_error() or not words.any():
        why = probe.get_error() if probe.is_error() else "no token can start it"
        raise InvalidRequestError(
            f"{field}: the grammar has no valid first token ({why})", field=field, provider="mlx"
        )


def _lark_string(text: str) -> str:
    return json.dumps(text)  # Lark string literals take JSON's escapes
