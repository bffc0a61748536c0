"""Images + prompts (+ targets) -> the batch ``PaliModel.forward``/``generate`` take, and ids -> text.

In PaLI the prompt goes to the encoder (after the visual tokens) and the target ("suffix") is
the decoder's text, so labels are just the suffix ids with ``</s>`` appended and padding set to
-100: prompt tokens can never leak into the loss. Decoder inputs are derived from the labels by
the model (shift right behind the start token).

A saved processor is two files, ``spiece.model`` and ``processor_config.json`` (plus
``qformer_tokenizer.json`` for InstructBLIP), which may sit beside a model checkpoint's
``config.json`` and weights. ``from_pretrained`` also reads a transformers BLIP-2 / InstructBLIP /
mBLIP checkpoint's own processor files (see `pali.processing.hf_processing`) and records what it read in
its config, so ``save_pretrained`` writes our two files and a reload is identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any
import warnings

import torch

from . import hf_processing
from ..config.base import Config
from ..defaults import IGNORE_INDEX, MAX_PROMPT_LENGTH, MAX_TARGET_LENGTH
from ..errors import CheckpointError, ConfigError, InputError, MissingFileError
from ..io import atomic_directory, atomic_files, read_json
from .image import BACKENDS, RESAMPLE, ImageLike, ImageProcessor, split_batch
from .prompts import PROMPT_SETS
from .tokenizer import SPIECE_NAME, Tokenizer
from .tokenizer import load as load_tokenizer
from .tokenizer import pad_rows, resolve_file
from .wordpiece import WordPieceTokenizer

PROCESSOR_CONFIG_NAME = "processor_config.json"
QFORMER_TOKENIZER_NAME = "qformer_tokenizer.json"


@dataclass
class ProcessorConfig(Config):
    """``max_length`` bounds prompt tokens and ``max_target_length`` suffix tokens (eos included);
    longer text is truncated, keeping the eos, with a warning (a cut prompt may ask a different
    question), or with ``truncation=False`` an [`InputError`][pali.InputError].

    The model's prompt set, saved with it so every caller agrees: ``prompt_set`` names the
    family whose prompt wording the heads use (`pali.processing.prompts.PROMPT_SETS`: ``pali``, ``blip2``,
    ``instructblip``, ``mblip``), ``classify_template`` writes a class name as the target text
    classification scores (what the model was trained on, e.g. ``"a {label}"``), and
    ``languages`` lists the language codes the model learned (empty: any of mT5's); asking for
    another one warns. Older files without these fields load with the old defaults (``pali``,
    ``"{label}"``, any language).

    Images: ``resample`` (a filter name), ``image_backend`` (``torch``: PaLI's float resize;
    ``pil``: PIL's uint8 resize, as transformers' processors), then ``(x * rescale_factor -
    image_mean) / image_std`` on 0-255 values; the defaults are PaLI's ``x / 127.5 - 1``.
    ``qformer``: the processor also makes InstructBLIP's Q-Former ids (``qformer_tokenizer.json``).
    """

    image_size: int = 224
    max_length: int = MAX_PROMPT_LENGTH
    max_target_length: int = MAX_TARGET_LENGTH
    extra_ids: int = 100
    truncation: bool = True
    classify_template: str = "{label}"
    languages: list = field(default_factory=list)
    prompt_set: str = "pali"
    resample: str = "bilinear"
    image_backend: str = "torch"
    image_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    rescale_factor: float = 1 / 255
    qformer: bool = False

    def __post_init__(self) -> None:
        self.require_positive("image_size", "max_length", "max_target_length")
        if self.prompt_set not in PROMPT_SETS:
            raise ConfigError(f"ProcessorConfig.prompt_set must be one of {list(PROMPT_SETS)}, got {self.prompt_set!r}")
        if self.image_backend not in BACKENDS or self.resample not in RESAMPLE:
            raise ConfigError(
                f"ProcessorConfig.image_backend {self.image_backend!r} / resample {self.resample!r}: "
                f"choose from {BACKENDS} / {list(RESAMPLE)}"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            ):
                raise ConfigError(f"ProcessorConfig.{name} must be 3 numbers (one per channel), got {value!r}")
        if isinstance(self.extra_ids, bool) or not isinstance(self.extra_ids, int) or self.extra_ids < 0:
            raise ConfigError(f"ProcessorConfig.extra_ids must be an integer >= 0, got {self.extra_ids!r}")
        if not isinstance(self.classify_template, str) or "{label}" not in self.classify_template:
            raise ConfigError(f"ProcessorConfig.classify_template must contain '{{label}}', got {self.classify_template!r}")
        if not isinstance(self.languages, list) or not all(isinstance(c, str) for c in self.languages):
            raise ConfigError(f"ProcessorConfig.languages must be a list of language codes, got {self.languages!r}")


class PaliProcessor:
    """Tokenizer + image processor with PaLI's batch layout."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: ProcessorConfig | None = None,
        qformer_tokenizer: WordPieceTokenizer | None = None,
    ) -> None:
        self.config = config or ProcessorConfig(extra_ids=tokenizer.extra_ids, qformer=qformer_tokenizer is not None)
        if self.config.extra_ids != tokenizer.extra_ids:
            raise ConfigError(
                f"ProcessorConfig.extra_ids {self.config.extra_ids} != tokenizer's {tokenizer.extra_ids}"
            )
        if self.config.qformer != (qformer_tokenizer is not None):
            raise ConfigError(f"ProcessorConfig.qformer is {self.config.qformer} but a Q-Former tokenizer was "
                              f"{'not ' if qformer_tokenizer is None else ''}given")
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        c = self.config
        self.image_processor = ImageProcessor(
            c.image_size, resample=c.resample, backend=c.image_backend, mean=c.image_mean, std=c.image_std,
            rescale_factor=c.rescale_factor,
        )

    # -- files ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, source: str | Path, *, revision: str | None = None, prompt_set: str | None = None
    ) -> PaliProcessor:
        """From a directory or Hub repo holding our ``spiece.model`` and ``processor_config.json``,
        or a transformers BLIP-2 / InstructBLIP / mBLIP checkpoint (``preprocessor_config.json``,
        ``spiece.model``, ``config.json``; see `pali.processing.hf_processing`). ``prompt_set`` overrides
        the prompt set the files name (or that the checkpoint's family implies)."""
        if Path(source).expanduser().is_file():
            raise CheckpointError(f"{source}: PaliProcessor.from_pretrained needs a directory or Hub repo id")

        def resolve(name: str) -> Path:
            return resolve_file(source, name, revision=revision)

        try:
            path = resolve(PROCESSOR_CONFIG_NAME)
            data = read_json(path)
        except CheckpointError as e:
            ours, data = e, None
        if data is None or (isinstance(data, dict) and "processor_class" in data):  # none, or transformers' own
            if data is None:  # no config of ours: transformers' image processor file or nothing
                try:
                    resolve(hf_processing.PREPROCESSOR_NAME)
                except MissingFileError as e:
                    raise CheckpointError(
                        f"{source}: no processor files: neither pali's {PROCESSOR_CONFIG_NAME} ({ours}) nor "
                        f"transformers' {hf_processing.PREPROCESSOR_NAME} ({e})"
                    ) from None
            fields, tokenizer, qformer = hf_processing.read(resolve, data, prompt_set)
            return cls(tokenizer, _config(fields, source), qformer)
        if isinstance(data, dict) and prompt_set is not None:
            data = {**data, "prompt_set": prompt_set}
        config = _config(data, path)
        tokenizer = load_tokenizer(resolve, extra_ids=config.extra_ids)
        qformer = WordPieceTokenizer.from_file(resolve(QFORMER_TOKENIZER_NAME)) if config.qformer else None
        return cls(tokenizer, config, qformer)

    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False) -> None:
        """Write ``spiece.model`` + ``processor_config.json`` into ``directory``.

        A new directory appears complete or not at all; in an existing one (a model checkpoint,
        say) each file is replaced in one rename, and existing processor files are refused unless
        ``overwrite``.
        """
        directory = Path(directory)
        if not directory.exists():
            with atomic_directory(directory) as staging:
                self._write(staging)
            return
        names = (SPIECE_NAME, QFORMER_TOKENIZER_NAME, PROCESSOR_CONFIG_NAME)
        existing = [n for n in names if (directory / n).exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{directory} already holds {existing}; pass overwrite=True to replace")
        with atomic_files(directory, names) as staging:  # the config last: it says whether the Q-Former file is read
            self._write(staging)

    def _write(self, directory: Path) -> None:
        self.tokenizer.save(directory / SPIECE_NAME)
        if self.qformer_tokenizer is not None:
            self.qformer_tokenizer.save(directory / QFORMER_TOKENIZER_NAME)
        text = json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"
        (directory / PROCESSOR_CONFIG_NAME).write_text(text)

    # -- batches -------------------------------------------------------------------------------

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        text: str | Sequence[str] | None = None,
        suffix: str | Sequence[str] | None = None,
        *,
        padding: bool | str = "longest",
        truncation: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """``pixel_values`` ``[B, 3, S, S]``, ``input_ids``/``attention_mask`` ``[B, T]`` and, with
        ``suffix``, ``labels`` ``[B, T']`` (eos appended, padding -100). Give images, text or
        both; every given list must have the same length B. With a Q-Former tokenizer
        (InstructBLIP) the prompts also come as ``qformer_input_ids``/``qformer_attention_mask``,
        transformers' names, which ``PaliModel.generate`` takes; a BLIP-2 processor makes none.

        Prompts must hold some non-blank text (a suffix may be empty: an empty answer is a
        target). Text longer than ``max_length``/``max_target_length`` tokens is truncated, or
        rejected with ``truncation=False`` (default: ``config.truncation``, which warns when it
        cuts; an explicit ``truncation=True`` cuts silently)."""
        warn = truncation is None
        truncation = self.config.truncation if truncation is None else truncation
        batch: dict[str, torch.Tensor] = {}
        sizes: dict[str, int] = {}
        if images is not None:
            images = split_batch(images)
            sizes["images"] = len(images)
            batch["pixel_values"] = self.image_processor(images)
        if text is not None:
            texts = _as_list(text, "text")
            blank = [i for i, t in enumerate(texts) if not t.strip()]
            if blank:
                raise InputError(f"text {blank[0]} is empty: PaLI needs a prompt (e.g. 'caption en')")
            sizes["text"] = len(texts)
            rows = self._encode(texts, self.tokenizer.encode, "text", "max_length", truncation, warn)
            ids, mask = pad_rows(rows, self.tokenizer.pad_id, padding=padding, max_length=self.config.max_length)
            batch.update(input_ids=ids, attention_mask=mask)
            if self.qformer_tokenizer is not None:  # InstructBLIP: the instruction goes to the Q-Former too
                qformer = self.qformer_tokenizer
                rows = self._encode(texts, qformer.encode, "Q-Former text", "max_length", truncation, warn)
                ids, mask = pad_rows(rows, qformer.pad_id, padding=padding, max_length=self.config.max_length)
                batch.update(qformer_input_ids=ids, qformer_attention_mask=mask)
        if suffix is not None:
            targets = _as_list(suffix, "suffix")
            sizes["suffix"] = len(targets)
            rows = self._encode(targets, self.tokenizer.encode, "suffix", "max_target_length", truncation, warn)
            labels, _ = pad_rows(rows, IGNORE_INDEX, padding=padding, max_length=self.config.max_target_length)
            batch["labels"] = labels
        if not batch or set(sizes) == {"suffix"}:
            raise InputError("give images, text or both (a suffix alone has nothing to condition on)")
        if len(set(sizes.values())) > 1:
            raise InputError(f"batch sizes differ: {sizes}")
        return batch

    def _encode(
        self, texts: list[str], encode: Callable[[str], list[int]], what: str, limit_name: str, truncation: bool,
        warn: bool,
    ) -> list[list[int]]:
        """Token rows (closing token included: ``</s>``, or the Q-Former's ``[SEP]``) within
        ``config.<limit_name>``: cut keeping that last token with a warning, cut silently, or an
        error, as ``__call__`` describes."""
        limit = getattr(self.config, limit_name)
        rows = [encode(t) for t in texts]
        long = [i for i, row in enumerate(rows) if len(row) > limit]
        if not long:
            return rows
        first = f"{what} {long[0]} has {len(rows[long[0]])} tokens > {limit_name} {limit}"
        if not truncation:
            raise InputError(f"{first} and truncation=False")
        if warn:
            warnings.warn(
                f"{first}: truncated to {limit} (the model sees only its start); shorten it, raise "
                f"ProcessorConfig.{limit_name}, or pass truncation=False to make this an error",
                stacklevel=3,
            )
        return [row if len(row) <= limit else row[: limit - 1] + row[-1:] for row in rows]

    def check_language(self, lang: str) -> None:
        """Warn when ``lang`` is not among the languages the model learned (``config.languages``)."""
        from .prompts import language

        code, learned = language(lang), [language(c) for c in self.config.languages]
        if learned and code not in learned:
            warnings.warn(
                f"language {lang!r} is not one this model learned ({', '.join(learned)}); "
                "its answer will likely be in one of those instead",
                stacklevel=3,
            )

    def decode(self, ids: Any) -> str:
        """Text of one generated row: stops at ``</s>``, skips padding, sentinels and the ids of an
        embedding table's rows past the tokenizer (see [`Tokenizer.decode`][pali.processing.tokenizer.Tokenizer.decode])."""
        return self.tokenizer.decode(ids)

    def batch_decode(self, ids: Any) -> list[str]:
        return self.tokenizer.batch_decode(ids)


def _config(data: Any, where: str | Path) -> ProcessorConfig:
    try:
        return ProcessorConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _as_list(value: str | Sequence[str], what: str) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise InputError(f"{what} must be a str or a non-empty list of str")
    return values


def shipped_processor(folder: str | Path) -> PaliProcessor | None:
    """The processor a transformers checkpoint folder ships (BLIP-2's ``preprocessor_config.json``
    or transformers 5's ``processor_config.json``, with ``spiece.model``), as ours; ``None`` when
    it ships none, or, with a warning saying why, when its files are incomplete."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in (hf_processing.PREPROCESSOR_NAME, PROCESSOR_CONFIG_NAME)):
        return None
    try:
        return PaliProcessor.from_pretrained(folder)
    except CheckpointError as e:
        warnings.warn(f"{folder}: its processor files are not converted ({e}); only the weights are", stacklevel=2)
        return None
