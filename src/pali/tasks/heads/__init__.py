"""Task heads: each turns a task into a prompt and the model's output into a typed result.

Built-in heads (``caption``, ``vqa``, ``ocr``, ``detect``, ``classify``) register themselves in
``pali.config.registry.HEADS`` when ``pali`` is imported, before any plugin is looked at, so a plugin
head that takes a built-in name fails loudly instead of shadowing it. Registry entries are head
classes (or any callable returning a head); [`get_head`][pali.tasks.heads.get_head] builds one.
"""

from typing import Any

from ...config.registry import HEADS
from .base import FamilyHead, Head, generate_texts
from .classify import Classification, ClassifyHead
from .detect import DetectHead, Detection, LocationCodec, TextLocationCodec, TokenLocationCodec
from .text import Answer, Caption, CaptionHead, OCRHead, OcrText, VQAHead


def get_head(name: str, **options: Any) -> Head:
    """A fresh head registered as ``name`` (built-in or plugin), built with ``options``."""
    return HEADS.get(name)(**options)


__all__ = [
    "Answer", "Caption", "CaptionHead", "Classification", "ClassifyHead", "DetectHead", "Detection",
    "FamilyHead", "Head", "LocationCodec", "OCRHead", "OcrText", "TextLocationCodec", "TokenLocationCodec",
    "VQAHead", "generate_texts", "get_head",
]

from ...lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.tasks.heads.<module> after a bare ``import pali``
