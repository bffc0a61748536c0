"""Text stacks. Each module registers itself in ``pali.registry.TEXT_STACKS``."""

from . import mt5  # noqa: F401
