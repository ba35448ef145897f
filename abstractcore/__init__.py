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
    StructuredOutputError,
    ToolCallError,
    UnsupportedFeatureError,
)
from .factory import available_providers, create_llm
from .providers.base import BaseProvider
from .tools import Tool, ToolRun, arun_tools, run_tools, tool
from .types import (
    GenerateResponse,
    Message,
    StreamChunk,
    Timing,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)

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
    "StructuredOutputError",
    "Timing",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallError",
    "ToolRun",
    "TopLogprob",
    "UnsupportedFeatureError",
    "Usage",
    "__version__",
    "arun_tools",
    "available_providers",
    "create_llm",
    "errors",
    "run_tools",
    "tool",
]

# A library never configures logging; NullHandler only silences "no handler" warnings.
logging.getLogger(__name__).addHandler(logging.NullHandler())
