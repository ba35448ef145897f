"""Property: however a stream cuts the argument texts of its tool calls (any number of
fragments, anywhere, inside strings and escapes, calls interleaved), ToolCallAssembler puts
back exactly the objects the model wrote."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from abstractcore.tools import ToolCallAssembler
from abstractcore.types import ToolCallDelta

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # any code point: quotes, backslashes, control characters, astral planes
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_arguments = st.dictionaries(st.text(max_size=8), _json, max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(_arguments, min_size=1, max_size=4),
    ascii_only=st.booleans(),
    data=st.data(),
)
def test_any_split_reassembles(calls: list[dict[str, Any]], ascii_only: bool, data: Any) -> None:
    texts = [json.dumps(c, ensure_ascii=ascii_only) for c in calls]
    fragments: list[list[str]] = []
    for text in texts:
        cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
        edges = [0, *sorted(cuts), len(text)]
        fragments.append([text[a:b] for a, b in zip(edges, edges[1:])])  # "" pieces included
    # Any interleaving of the calls that keeps each call's own fragments in order.
    order = data.draw(st.permutations([i for i, f in enumerate(fragments) for _ in f]))
    deltas: list[ToolCallDelta] = []
    started: set[int] = set()
    position = [0] * len(fragments)
    for i in order:
        piece = fragments[i][position[i]]
        position[i] += 1
        head = {} if i in started else {"id": f"call_{i}", "name": f"tool_{i}"}
        started.add(i)
        deltas.append(ToolCallDelta(index=i, arguments=piece, **head))
    # ...delivered in chunks of any sizes.
    assembler = ToolCallAssembler()
    rest = deltas
    while rest:
        size = data.draw(st.integers(1, len(rest)))
        assembler.add(rest[:size])
        rest = rest[size:]
    got = assembler.calls()
    assert [c.arguments for c in got] == calls
    assert [c.raw_arguments for c in got] == texts
    assert [(c.id, c.name) for c in got] == [(f"call_{i}", f"tool_{i}") for i in range(len(calls))]
