"""Zero-shot classification by likelihood, PaLI's ImageNet method.

No label is generated: each candidate class name is scored as the decoder's target text under the
captioning prompt, and the classes are ranked by that score. The score of a label is the
log-likelihood of its whole target, ``sum log p(token)`` over the label's tokens and the closing
``</s>`` (the eos makes "cat" and "cat food" differ: a prefix is not a free win). Summed scores
favour short names; ``length_normalize=True`` ranks by the mean per token instead.

The model's own scoring entry point ([`pali.PaliModel.score`][]) does the work: all candidates
of all images go through the decoder in one batched pass; the vision tower and the encoder run
once per image (not once per candidate). For a large label set with a 250k vocabulary the
``[images x labels, T, V]`` logits are big: ``batch_size`` splits the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...config.registry import HEADS
from ...defaults import IGNORE_INDEX
from ...errors import InputError
from ...processing import prompts
from ...processing.image import ImageLike, split_batch
from ...processing.prompts import PromptSet
from ...processing.tokenizer import pad_rows
from .base import FamilyHead, check_language, model_inputs


@dataclass
class Classification:
    """``score`` is the label's log-likelihood (summed or per token, see the head)."""

    label: str
    score: float


class ClassifyHead(FamilyHead):
    """``run(model, processor, images, labels, lang="en")`` -> per image, labels best first.

    ``template`` writes a label as target text (e.g. ``"a photo of a {label}"``); by default the
    model's own, from its processor config (``ProcessorConfig.classify_template``: what it was
    trained on), so every caller scores the same targets.
    """

    name = "classify"

    def __init__(self, template: str | None = None, length_normalize: bool = False) -> None:
        if template is not None and "{label}" not in template:
            raise InputError(f"template {template!r} must contain '{{label}}'")
        self.template = template
        self.length_normalize = length_normalize

    def build_prompt(self, lang: str = "en", prompt_set: str | PromptSet = prompts.PALI) -> str:
        """The captioning prompt (of the processor's prompt set, in ``run``)."""
        return prompts.get_prompt_set(prompt_set).caption_prompt(lang)

    def parse(self, output: Sequence[float] | torch.Tensor, labels: Sequence[str]) -> list[Classification]:
        """Rank ``labels`` by their scores (one image's row of [`score`][pali.tasks.heads.ClassifyHead.score])."""
        scores = [float(s) for s in output]
        ranked = sorted(zip(labels, scores), key=lambda pair: pair[1], reverse=True)
        return [Classification(label, score) for label, score in ranked]

    def run(
        self,
        model,
        processor,
        images: ImageLike | Sequence[ImageLike],
        labels: Sequence[str],
        *,
        lang: str = "en",
        batch_size: int | None = None,
    ) -> list[list[Classification]]:
        labels = _labels(labels)
        scores = self.score(model, processor, images, labels, lang=lang, batch_size=batch_size)
        return [self.parse(row, labels) for row in scores]

    @torch.no_grad()
    def score(
        self,
        model,
        processor,
        images: ImageLike | Sequence[ImageLike],
        labels: Sequence[str],
        *,
        lang: str = "en",
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``[images, labels]`` float32 scores, from [`pali.PaliModel.score`][]."""
        images, labels = split_batch(images), _labels(labels)
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        check_language(processor, lang)
        prompt = self.prompt(processor, lang=lang)
        batch = model_inputs(model, processor, processor(images=images, text=[prompt] * len(images)))
        template = self.template or getattr(processor.config, "classify_template", "{label}")
        rows = [processor.tokenizer.encode(template.format(label=label)) for label in labels]
        targets = pad_rows(rows, IGNORE_INDEX)[0]
        scores = model.score(**batch, targets=targets, batch_size=batch_size).cpu()
        if self.length_normalize:
            scores = scores / (targets != IGNORE_INDEX).sum(-1)
        return scores


def _labels(labels: Any) -> list[str]:
    values = [labels] if isinstance(labels, str) else list(labels)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise InputError("classify needs a non-empty list of non-empty label strings")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise InputError(f"duplicate labels {duplicates}")
    return values


HEADS.register(ClassifyHead.name, ClassifyHead, origin=__name__)
