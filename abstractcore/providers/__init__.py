"""Provider implementations; import them through :func:`abstractcore.create_llm`."""

from .base import BaseProvider

__all__ = ["BaseProvider"]
