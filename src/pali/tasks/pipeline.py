"""``pali.pipeline(model, processor)``: one call per task, on top of the heads.

Each method takes one image (and returns one result) or a list of images (and returns a list).
Generation options (``max_new_tokens``, ``num_beams``...) go to
[`PaliModel.generate`][pali.PaliModel.generate]; the pipeline's own defaults can be set once at
construction (``generation_config`` shows them: the library's
[`GenerationConfig`][pali.GenerationConfig] defaults, e.g. ``pali.defaults.MAX_NEW_TOKENS``, unless
set). Prompts are worded in the processor's prompt set (``pipe.prompts``: PaLI's, BLIP-2's,
mBLIP's...).

>>> pipe = pali.pipeline(model, processor, max_new_tokens=16)   # doctest: +SKIP
>>> pipe.caption(image, lang="fr").text                           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..generation.search import GenerationConfig
from ..processing.image import is_batch
from ..processing.prompts import PromptSet
from .heads import Answer, Caption, Classification, Detection, OcrText, get_head
from .heads.base import prompt_set_of


class Pipeline:
    """Captioning, VQA, OCR, detection and classification for a model + processor pair."""

    def __init__(self, model, processor, **generate_kwargs: Any) -> None:
        self.model = model
        self.processor = processor
        self.generation_config = GenerationConfig().updated(**generate_kwargs)  # an unknown option fails here
        self.generate_kwargs = generate_kwargs

    @property
    def prompts(self) -> PromptSet:
        """The prompt set the heads word their prompts in: the processor's (its model family's)."""
        return prompt_set_of(self.processor)

    def run(self, task: str, images, *, head_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Any registered head (plugins included) by name; ``kwargs`` go to its ``run``."""
        head = get_head(task, **(head_options or {}))
        results = head.run(self.model, self.processor, images, **kwargs)
        return results if is_batch(images) else results[0]

    def _generate(self, task: str, images, generate_kwargs: dict[str, Any], **prompt_kwargs: Any) -> Any:
        options = {**self.generate_kwargs, **generate_kwargs}
        return self.run(task, images, generate_kwargs=options, **prompt_kwargs)

    def caption(self, images, lang: str = "en", prefix: str = "", **generate_kwargs: Any) -> Caption | list[Caption]:
        return self._generate("caption", images, generate_kwargs, lang=lang, prefix=prefix)

    def answer(self, images, question: str, lang: str = "en", **generate_kwargs: Any) -> Answer | list[Answer]:
        return self._generate("vqa", images, generate_kwargs, question=question, lang=lang)

    def ocr(self, images, lang: str = "en", **generate_kwargs: Any) -> OcrText | list[OcrText]:
        return self._generate("ocr", images, generate_kwargs, lang=lang)

    def detect(self, images, labels: str | Sequence[str], **generate_kwargs: Any) -> list[Detection] | list[list[Detection]]:
        """Boxes ``(x0, y0, x1, y1)`` in pixels of each original image."""
        return self._generate("detect", images, generate_kwargs, labels=labels)

    def classify(
        self,
        images,
        labels: Sequence[str],
        lang: str = "en",
        *,
        template: str | None = None,
        length_normalize: bool = False,
    ) -> list[Classification] | list[list[Classification]]:
        """Labels ranked by likelihood, best first (see ``pali.tasks.heads.classify``); ``template``
        defaults to the model's own (its processor config's ``classify_template``)."""
        options = {"template": template, "length_normalize": length_normalize}
        return self.run("classify", images, head_options=options, labels=labels, lang=lang)


def pipeline(model, processor, **generate_kwargs: Any) -> Pipeline:
    """A [`Pipeline`][pali.tasks.pipeline.Pipeline]; ``generate_kwargs`` are defaults for every generating task."""
    return Pipeline(model, processor, **generate_kwargs)

