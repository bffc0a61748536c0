"""Vision encoders. Each module registers itself in ``pali.registry.VISION_ENCODERS``."""

from . import vit  # noqa: F401
