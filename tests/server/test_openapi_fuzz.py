"""The server fuzzed against its own OpenAPI document with schemathesis: bodies that fit the
schema and bodies that do not, on every operation, over real loopback HTTP. No response may
be a 5xx, and every response must have a documented status, content type and shape.

Bounded (a few dozen examples per operation, derandomized so a run is reproducible) and
served by a fast provider double that answers every request at once: text, a tool call when
tools are offered, JSON when a format is asked for, logprobs when asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from abstractcore.providers.base import BaseProvider, Features
from abstractcore.request import GenerationRequest
from abstractcore.server import create_app
from abstractcore.types import StreamChunk, TokenLogprob, ToolCallDelta, Usage

from .conftest import API_KEY, ThreadServer

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "fuzz-1"
EXAMPLES_PER_OPERATION = 40
# (status, content type) of the responses each operation gave while fuzzed
SEEN: dict[str, set[tuple[int, str]]] = {}


class FuzzProvider(BaseProvider):
    """Answers at once, whatever the request: never waits, never fails on its own."""

    provider_name = "fuzz"
    features = Features(tools=True, parallel_tool_calls=True, structured_output=True, logprobs=True)

    def _stream(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        raise NotImplementedError

    async def _astream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        lp = [TokenLogprob(token="x", logprob=-0.5)] if request.logprobs else None
        if request.tools and request.tool_choice != "none":
            delta = ToolCallDelta(index=0, id="call_0", name=request.tools[0].name, arguments="{}")
            yield StreamChunk(tool_call_deltas=[delta])
            reason = "tool_calls"
        elif request.response_format is not None:
            yield StreamChunk(content="{}", logprobs=lp)
            reason = "stop"
        else:
            words = request.messages[-1].content.split()[:3] or ["ok"]
            for word in words:
                yield StreamChunk(content=word + " ", logprobs=lp)
            reason = "stop"
        yield StreamChunk(finish_reason=reason, usage=Usage(prompt_tokens=3, completion_tokens=1))


# The app exists at import so that schemathesis can read its document while collecting the
# tests (its fixture-based loader does not work with this pytest); the fixture serves it.
APP = create_app(FuzzProvider(MODEL), api_key=API_KEY, max_output_tokens_cap=8)
schema = schemathesis.openapi.from_dict(APP.openapi())
# The document's examples, then generated bodies; not the coverage phase, which derives
# hundreds of boundary cases per operation from a schema this size.
schema.config.phases.coverage.enabled = False


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ThreadServer]:
    server = ThreadServer(APP).start()
    # What is fuzzed is what the server serves.
    assert server.client.get("/openapi.json").json() == APP.openapi()
    yield server
    server.stop()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_documented_responses(case: Any, fuzz_server: ThreadServer) -> None:
    if isinstance(case.body, dict) and "model" in case.body:
        # The served id: a random one only ever meets the 404, the fields behind it never.
        case.body["model"] = MODEL
    r = case.call_and_validate(
        base_url=fuzz_server.base_url,
        headers=AUTH,
        timeout=30,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    kind = (r.headers.get("content-type") or [""])[0].split(";")[0]  # headers: name -> values
    SEEN.setdefault(case.operation.label, set()).add((r.status_code, kind))


def test_fuzzing_reached_the_model() -> None:
    """Runs after the fuzzing: every generating operation answered 200, as JSON and as a
    stream (the document's examples see to that), so the checks above judged real answers."""
    if not SEEN:
        pytest.skip("the fuzzing did not run in this session")
    for label in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/messages"):
        assert {(200, "application/json"), (200, "text/event-stream")} <= SEEN[label], SEEN
        assert any(status == 400 for status, _ in SEEN[label]), SEEN
