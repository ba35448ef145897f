"""abstractcore: one Python API for every LLM backend.

>>> from abstractcore import create_llm
>>> llm = create_llm("mlx", model="smollm2-135m")
>>> llm.generate("What is the capital of France?").content
"""

from __future__ import annotations

import logging

from . import errors
from .errors import (
    AbstractCoreError,
    ConfigurationError,
    GenerationCancelledError,
    OverloadedError,
    ProviderError,
)
from .factory import available_providers, create_llm
from .providers.base import BaseProvider
from .types import GenerateResponse, Message, StreamChunk, Timing, ToolCall, Usage

__version__ = "0.1.0"

__all__ = [
    "AbstractCoreError",
    "BaseProvider",
    "ConfigurationError",
    "GenerateResponse",
    "GenerationCancelledError",
    "Message",
    "OverloadedError",
    "ProviderError",
    "StreamChunk",
    "Timing",
    "ToolCall",
    "Usage",
    "__version__",
    "available_providers",
    "create_llm",
    "errors",
]

# A library never configures logging; NullHandler only silences "no handler" warnings.
logging.getLogger(__name__).addHandler(logging.NullHandler())
