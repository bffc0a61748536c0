"""Object detection as text: boxes written as quantised coordinates followed by the label.

PaLI's target for one object is ``ymin xmin ymax xmax label`` with each coordinate a plain integer
0-999 (the image's height/width split into 1000 bins); objects are joined by `` ; ``. A value
``v`` in [0, 1] becomes ``round(v * 999)`` and comes back as ``q / 999``, so the image edges are
exact (``0 0 999 999`` is the whole image).

How coordinates are spelled is a ``LocationCodec``: ``TextLocationCodec`` is PaLI's
plain numbers; a vocabulary with dedicated location tokens (PaliGemma's ``<loc0000>``-
``<loc1023>``) is ``TokenLocationCodec``, or any object with the same two methods.

Parsing never raises on model output: a group that is cut short, out of range, upside down
(``ymin > ymax``) or has no label yields no box, and the well-formed groups around it still do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import re
from typing import Any, Protocol

from ...config.registry import HEADS
from ...errors import InputError
from ...processing import prompts
from ...processing.prompts import PromptSet
from .base import FamilyHead

NormBox = tuple[float, float, float, float]  # ymin, xmin, ymax, xmax in [0, 1]


@dataclass
class Detection:
    """``box`` = ``(x0, y0, x1, y1)`` in pixels of the original image (edges, so 0..width)."""

    box: tuple[float, float, float, float]
    label: str

    def __repr__(self) -> str:  # pixels to one decimal: the 1000-bin coordinates hold no more
        box = ", ".join(f"{v:.1f}" for v in self.box)
        return f"Detection(box=({box}), label={self.label!r})"


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes; 0 when both are empty."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class LocationCodec(Protocol):
    def encode(self, objects: Sequence[tuple[NormBox, str]]) -> str:
        """Target text for objects given as (normalised ``ymin, xmin, ymax, xmax``, label)."""

    def decode(self, text: str) -> list[tuple[NormBox, str]]:
        """Every well-formed object in ``text``; malformed groups are skipped, never raised on."""


class _QuantisedCodec:
    """Shared by the codecs below: ``bins`` levels per coordinate, objects joined by `` ; ``."""

    coordinate: str  # regex with one group: the bin number
    gap: str  # regex between coordinates
    gap_text: str  # what encode writes between coordinates

    def __init__(self, bins: int) -> None:
        if bins < 2:
            raise InputError(f"a location codec needs at least 2 bins, got {bins}")
        self.bins = bins
        quad = self.gap.join([self.coordinate] * 4)
        plain = re.sub(r"\((?!\?)", "(?:", quad)  # the same pattern without capture groups
        self._object = re.compile(rf"{quad}\s*(.*?)\s*(?=;|{plain}|$)", re.DOTALL)

    def format(self, q: int) -> str:
        raise NotImplementedError

    def quantise(self, value: float) -> int:
        return min(self.bins - 1, max(0, round(value * (self.bins - 1))))

    def encode(self, objects: Sequence[tuple[NormBox, str]]) -> str:
        parts = []
        for box, label in objects:
            ymin, xmin, ymax, xmax = (self.quantise(v) for v in box)
            parts.append(f"{self.gap_text.join(self.format(q) for q in (ymin, xmin, ymax, xmax))} {label}")
        return prompts.LABEL_SEPARATOR.join(parts)

    def decode(self, text: str) -> list[tuple[NormBox, str]]:
        found = []
        for match in self._object.finditer(text):
            *coords, label = match.groups()
            ymin, xmin, ymax, xmax = (int(c) for c in coords)
            if not label or max(ymin, xmin, ymax, xmax) >= self.bins or ymin > ymax or xmin > xmax:
                continue
            found.append((tuple(q / (self.bins - 1) for q in (ymin, xmin, ymax, xmax)), label))
        return found


class TextLocationCodec(_QuantisedCodec):
    """PaLI's plain-number coordinates (``bins=1000``: 0-999)."""

    coordinate = r"(?<![\w.])(\d+)(?![\w.])"
    gap = r"\s+"
    gap_text = " "

    def __init__(self, bins: int = 1000) -> None:
        super().__init__(bins)

    def format(self, q: int) -> str:
        return str(q)


class TokenLocationCodec(_QuantisedCodec):
    """Dedicated location tokens ``<loc0000>``... (PaliGemma: 1024 of them, written adjacent)."""

    coordinate = r"<loc(\d{4})>"
    gap = r"\s*"
    gap_text = ""

    def __init__(self, bins: int = 1024) -> None:
        super().__init__(bins)

    def format(self, q: int) -> str:
        return f"<loc{q:04d}>"


class DetectHead(FamilyHead):
    """``build_prompt(labels)`` (one class name or several); results in original-image pixels."""

    name = "detect"

    def __init__(self, codec: LocationCodec | None = None) -> None:
        self.codec = codec or TextLocationCodec()

    def build_prompt(self, labels: str | Sequence[str], prompt_set: str | PromptSet = prompts.PALI) -> str:
        """PaLI's prompt; a prompt set without detection (BLIP-2's) raises InputError."""
        return prompts.get_prompt_set(prompt_set).detect_prompt(labels)

    def parse(self, output: str, image_size: tuple[int, int] = (1, 1)) -> list[Detection]:
        """Boxes from generated text; ``image_size`` is the original ``(height, width)``
        (the default gives normalised coordinates)."""
        height, width = image_size
        return [
            Detection((xmin * width, ymin * height, xmax * width, ymax * height), label)
            for (ymin, xmin, ymax, xmax), label in self.codec.decode(output)
        ]

    def target(self, detections: Sequence[Detection], image_size: tuple[int, int]) -> str:
        """Training target text (a processor ``suffix``) for boxes in original-image pixels."""
        height, width = image_size
        return self.codec.encode(
            [((d.box[1] / height, d.box[0] / width, d.box[3] / height, d.box[2] / width), d.label) for d in detections]
        )

    def parse_context(self, processor, image, prompt_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"image_size": processor.image_processor.original_sizes([image])[0]}


HEADS.register(DetectHead.name, DetectHead, origin=__name__)
