"""Heads whose answer is free text: captioning, visual question answering and OCR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import prompts
from ..registry import HEADS
from .base import Head


@dataclass
class Caption:
    text: str


@dataclass
class Answer:
    text: str


@dataclass
class OcrText:
    text: str


class CaptionHead(Head):
    """``build_prompt(lang="en", prefix="")``; the result is the whole caption, prefix included."""

    name = "caption"

    def build_prompt(self, lang: str = "en", prefix: str = "") -> str:
        return prompts.caption_prompt(lang, prefix)

    def parse(self, output: str, prefix: str = "") -> Caption:
        return Caption(" ".join(filter(None, (" ".join(prefix.split()), output.strip()))))

    def parse_context(self, processor, image, prompt_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"prefix": prompt_kwargs.get("prefix", "")}


class VQAHead(Head):
    """``build_prompt(question, lang="en")``."""

    name = "vqa"

    def build_prompt(self, question: str, lang: str = "en") -> str:
        return prompts.vqa_prompt(question, lang)

    def parse(self, output: str) -> Answer:
        return Answer(output.strip())


class OCRHead(Head):
    """``build_prompt(lang="en")``."""

    name = "ocr"

    def build_prompt(self, lang: str = "en") -> str:
        return prompts.ocr_prompt(lang)

    def parse(self, output: str) -> OcrText:
        return OcrText(output.strip())


for _head in (CaptionHead, VQAHead, OCRHead):
    HEADS.register(_head.name, _head, origin=__name__)
