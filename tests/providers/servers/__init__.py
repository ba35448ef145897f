"""Fake OpenAI, Anthropic and Ollama servers on 127.0.0.1, and client helpers, for the provider
tests."""

from .core import Connection, LoopbackServer, Request
from .dialects import DIALECTS, Reply
from .scenarios import FakeAPI, Recorder
from .verbs import PROVIDERS, VERBS, Answer, Outcome, answer, check_stream, from_response, run_verb

__all__ = [
    "DIALECTS",
    "Answer",
    "PROVIDERS",
    "VERBS",
    "Connection",
    "FakeAPI",
    "LoopbackServer",
    "Outcome",
    "Recorder",
    "Reply",
    "Request",
    "answer",
    "check_stream",
    "from_response",
    "run_verb",
]
