"""What a task head is, and the one generation path the generating heads share.

A head turns a task into a prompt (``build_prompt``), the model's output into typed results
(``parse``), and does both around a model call for a batch of images (``run``). Heads sit on top
of the model: they use only ``PaliModel``'s public API and a [`PaliProcessor`][pali.PaliProcessor], so a
head plugin needs nothing else either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import InputError
from ...processing.image import ImageLike, split_batch
from ...processing.prompts import PALI, PromptSet, get_prompt_set


class Head(ABC):
    """Base of every task head; subclasses set ``name`` (their registry key)."""

    name: str = ""

    @abstractmethod
    def build_prompt(self, **kwargs: Any) -> str:
        """The prompt for this task (keyword arguments are the task's: ``lang``, ``question``...)."""

    @abstractmethod
    def parse(self, output: Any, **context: Any) -> Any:
        """A typed result from one image's model output (usually the generated text)."""

    def run(
        self,
        model,
        processor,
        images: ImageLike | Sequence[ImageLike],
        *,
        generate_kwargs: dict[str, Any] | None = None,
        **prompt_kwargs: Any,
    ) -> list[Any]:
        """One result per image: the same prompt for each, greedy generation unless
        ``generate_kwargs`` (passed to [`PaliModel.generate`][pali.PaliModel.generate]) says otherwise."""
        images = split_batch(images)
        prompt = self.prompt(processor, **prompt_kwargs)
        if "lang" in prompt_kwargs:
            check_language(processor, prompt_kwargs["lang"])
        texts = generate_texts(model, processor, images, [prompt] * len(images), generate_kwargs)
        return [
            self.parse(text, **self.parse_context(processor, image, prompt_kwargs))
            for text, image in zip(texts, images)
        ]

    def parse_context(self, processor, image: ImageLike, prompt_kwargs: dict[str, Any]) -> dict[str, Any]:
        """What ``parse`` needs beyond the text for ``image`` (e.g. its size); nothing by default."""
        return {}

    def prompt(self, processor, **kwargs: Any) -> str:
        """The prompt ``run`` gives the model: ``build_prompt``'s, whatever the processor."""
        return self.build_prompt(**kwargs)


class FamilyHead(Head):
    """A built-in task head: it words its prompt in the prompt set the processor names
    (``ProcessorConfig.prompt_set``, see `pali.processing.prompts`), so each model family is asked in
    the words it was trained on; ``build_prompt`` takes that set as ``prompt_set``."""

    def prompt(self, processor, **kwargs: Any) -> str:
        return self.build_prompt(**kwargs, prompt_set=prompt_set_of(processor))


def prompt_set_of(processor) -> PromptSet:
    """The processor's prompt set (PaLI's for a processor whose config names none)."""
    return get_prompt_set(getattr(processor.config, "prompt_set", PALI.name))


def check_language(processor, lang: str) -> None:
    """Warn when the model never learned ``lang`` (a processor without that knowledge: no check)."""
    check = getattr(processor, "check_language", None)
    if check is not None:
        check(lang)


def generate_texts(
    model, processor, images: list[ImageLike], prompts: list[str], generate_kwargs: dict[str, Any] | None = None
) -> list[str]:
    """Generate for ``images`` with ``prompts`` and decode each row up to its eos."""
    batch = model_inputs(model, processor, processor(images=images, text=prompts))
    ids = model.generate(**batch, **generate_options(model, processor, generate_kwargs))
    return processor.batch_decode(ids)


def generate_options(model, processor, generate_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``generate_kwargs`` with the ids past the tokenizer's vocabulary (an embedding table padded
    past it, as Flan-T5's 32128 rows for 32100 pieces) suppressed, unless the caller passes its own
    ``suppress_tokens``: a padding row was never trained, and its id decodes to nothing."""
    unused = range(processor.tokenizer.vocab_size, model.config.text.vocab_size)
    options = {"suppress_tokens": tuple(unused)} if unused else {}
    return {**options, **(generate_kwargs or {})}


def model_inputs(model, processor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move a processor batch to the model's device, pixels in the model's dtype; check the
    tokenizer's ids fit the model's embedding table (a mismatch would index out of range)."""
    model_vocab = model.config.text.vocab_size
    if processor.tokenizer.vocab_size > model_vocab:
        raise InputError(
            f"the tokenizer has {processor.tokenizer.vocab_size} ids but the model's vocabulary only "
            f"{model_vocab}: they do not belong together"
        )
    qformer = getattr(processor, "qformer_tokenizer", None)
    qformer_vocab = getattr(model.config.connector, "vocab_size", 0)  # 0: no instruction input
    if qformer is not None and 0 < qformer_vocab < qformer.vocab_size:
        raise InputError(
            f"the Q-Former tokenizer has {qformer.vocab_size} ids but the model's Q-Former vocabulary only "
            f"{qformer_vocab}: they do not belong together"
        )
    param = next(model.parameters())
    out = {k: v.to(param.device) for k, v in batch.items()}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(param.dtype)
    return out
