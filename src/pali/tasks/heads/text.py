"""Heads whose answer is free text: captioning, visual question answering and OCR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config.registry import HEADS
from ...processing.prompts import PALI, PromptSet, get_prompt_set
from .base import FamilyHead


@dataclass
class Caption:
    text: str


@dataclass
class Answer:
    text: str


@dataclass
class OcrText:
    text: str


class CaptionHead(FamilyHead):
    """``build_prompt(lang="en", prefix="")``; the result is the whole caption, prefix included."""

    name = "caption"

    def build_prompt(self, lang: str = "en", prefix: str = "", prompt_set: str | PromptSet = PALI) -> str:
        return get_prompt_set(prompt_set).caption_prompt(lang, prefix)

    def parse(self, output: str, prefix: str = "") -> Caption:
        return Caption(" ".join(filter(None, (" ".join(prefix.split()), output.strip()))))

    def parse_context(self, processor, image, prompt_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"prefix": prompt_kwargs.get("prefix", "")}


class VQAHead(FamilyHead):
    """``build_prompt(question, lang="en")``."""

    name = "vqa"

    def build_prompt(self, question: str, lang: str = "en", prompt_set: str | PromptSet = PALI) -> str:
        return get_prompt_set(prompt_set).vqa_prompt(question, lang)

    def parse(self, output: str) -> Answer:
        return Answer(output.strip())


class OCRHead(FamilyHead):
    """``build_prompt(lang="en")``; a prompt set without OCR (BLIP-2's) raises InputError."""

    name = "ocr"

    def build_prompt(self, lang: str = "en", prompt_set: str | PromptSet = PALI) -> str:
        return get_prompt_set(prompt_set).ocr_prompt(lang)

    def parse(self, output: str) -> OcrText:
        return OcrText(output.strip())


for _head in (CaptionHead, VQAHead, OCRHead):
    HEADS.register(_head.name, _head, origin=__name__)
