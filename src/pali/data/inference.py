"""Batch inference over a source: ``pali.run(model, processor, task, source)`` yields one dict per input.

How a run is laid out, and why:

- **Plan** (in the calling process, no pixel read): each record gets its prompt (the head's, in
  the processor's prompt set, from the row's ``question``/``labels``/``prompt`` or the run's
  options) and its prompt length in tokens. Records are sorted by (label set, prompt length) and
  cut into batches, so a batch pads little and classification scores one label set per batch.
  The plan depends on the source and the options only: a resumed run drops the ids already done
  from the same batches, so its rows come in the same order as an uninterrupted run's.
- **Prepare** (DataLoader worker processes with ``workers > 0``): decode each image (a large JPEG
  at a reduced scale) and run the processor on the batch, while the model works on the previous one.
  An image that cannot be decoded becomes an ``error`` row; the run goes on.
- **Infer** (the calling process): the batched model path, ``model.generate`` (or
  ``model.score`` for classification) once per batch, answers parsed by the task's head.

Rows: ``id``, ``task``, ``answer`` (text; detection: the model's text, with ``boxes`` in original
pixels ``[x0, y0, x1, y1]`` and their ``labels``; classification: the best label, with ranked
``labels`` and ``scores``), ``question`` for VQA, or ``error`` instead of an answer; then
``model`` and ``options`` (what produced the row).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..defaults import IGNORE_INDEX
from ..errors import InputError
from ..models.quantize import weight_format
from ..processing.tokenizer import pad_rows
from ..tasks.heads import get_head
from ..tasks.heads.base import check_language, generate_options, model_inputs
from .sources import Columns, Record, Source, UnreadableImage, open_source

TASKS = ("caption", "vqa", "ocr", "detect", "classify")


@dataclass
class RunOptions:
    """A run's task options (recorded in every row). ``question``/``labels`` apply to rows that
    have none of their own; ``generate`` goes to ``PaliModel.generate`` (``max_new_tokens``...)."""

    task: str
    lang: str = "en"
    question: str | None = None
    labels: list[str] | None = None
    prefix: str = ""
    template: str | None = None
    length_normalize: bool = False
    generate: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # the model's, when not float32 (half precision can change answers)
    weights: str | None = None  # pali.quantize's format, when converted (int8 and bf16 change answers)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}: choose from {', '.join(TASKS)}")
        if isinstance(self.labels, str):
            self.labels = [v.strip() for v in self.labels.split(",") if v.strip()]

    def recorded(self) -> dict[str, Any]:
        """The options that shape this task's answers (the ones a row records)."""
        keep = {
            "caption": ("lang", "prefix"), "vqa": ("lang", "question"), "ocr": ("lang",),
            "detect": ("labels",), "classify": ("lang", "labels", "template", "length_normalize"),
        }[self.task]
        out = {k: v for k, v in asdict(self).items() if k in keep and v not in (None, "")}
        if self.task != "classify":
            out.update(self.generate)
        out.update({k: v for k, v in (("dtype", self.dtype), ("weights", self.weights)) if v})
        return out


@dataclass
class Item:
    """One planned input: record index, prompt, label set (detect/classify), or why it cannot run."""

    index: int
    id: str
    prompt: str = ""
    labels: tuple[str, ...] = ()
    question: str | None = None
    error: str | None = None
    length: int = 0


def plan(source: Source, processor, options: RunOptions, batch_size: int) -> list[list[Item]]:
    """The run's batches (see the module docs); an item with ``error`` set never reaches the model."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    head = _head(options)
    _check_prompt_set(head, processor, options)
    columns = source.columns
    items = []
    for index, record in enumerate(source.records):
        item = Item(index, record.id)
        try:
            _prompt(item, record, head, processor, options, columns)
        except InputError as e:
            item.error = str(e)
        items.append(item)
    items.sort(key=lambda it: (it.error is None, it.labels, it.length, it.index))
    batches: list[list[Item]] = []
    for item in items:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (last[0].error is None) == (item.error is None) and \
                last[0].labels == item.labels:
            last.append(item)
        else:
            batches.append([item])
    return batches


def _head(options: RunOptions):
    if options.task == "classify":
        return get_head("classify", template=options.template, length_normalize=options.length_normalize)
    return get_head(options.task)


def _check_prompt_set(head, processor, options: RunOptions) -> None:
    """Fail once, before any row, when the processor's prompt set cannot word this task at all
    (BLIP-2 and OCR or detection; a caption prefix it cannot continue), rather than once per row."""
    kwargs = {"vqa": {"question": "?", "lang": options.lang}, "detect": {"labels": ["?"]},
              "caption": {"lang": options.lang, "prefix": options.prefix}}.get(options.task, {"lang": options.lang})
    head.prompt(processor, **kwargs)


def _prompt(item: Item, record: Record, head, processor, options: RunOptions, columns: Columns) -> None:
    """Fill ``item``'s prompt (and label set, question, token length) from its row and the options."""
    task = options.task
    if task in ("detect", "classify"):
        labels = record.get(columns.labels) or options.labels
        if not labels:
            raise InputError(f"{record.where}: no labels (give --labels or a {columns.labels!r} column)")
        item.labels = tuple(labels)
    given = record.get(columns.prompt)
    if given is not None and task != "classify":
        if not isinstance(given, str) or not given.strip():
            raise InputError(f"{record.where}: empty {columns.prompt!r}")
        item.prompt = given
    elif task == "vqa":
        question = record.get(columns.question) or options.question
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{record.where}: no question (give --question or a {columns.question!r} column)")
        item.question = question
        item.prompt = head.prompt(processor, question=question, lang=options.lang)
    elif task == "caption":
        item.prompt = head.prompt(processor, lang=options.lang, prefix=options.prefix)
    elif task == "detect":
        item.prompt = head.prompt(processor, labels=list(item.labels))
    else:
        item.prompt = head.prompt(processor, lang=options.lang)
    item.length = len(processor.tokenizer.encode(item.prompt))


# -- preparing batches (in DataLoader workers) ---------------------------------------------------


class PreparedBatches(torch.utils.data.Dataset):
    """Batch ``i`` of the plan, decoded and processed: ``{"items", "errors", "sizes", "batch"}``."""

    def __init__(self, source: Source, processor, batches: list[list[Item]]) -> None:
        self.source, self.processor, self.batches = source, processor, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return prepare(self.source, self.processor, self.batches[i])


def prepare(source: Source, processor, items: list[Item]) -> dict[str, Any]:
    """Decode and process one batch; unreadable images become errors (by position)."""
    errors: dict[int, str] = {}
    images, sizes = [], []
    size = processor.config.image_size
    for pos, item in enumerate(items):
        if item.error is not None:
            errors[pos] = item.error
            continue
        try:
            image = source.image(item.index, size)
        except UnreadableImage as e:
            errors[pos] = str(e)
            continue
        images.append(image)
        sizes.append(image.info["original_size"])
    batch = None
    if images:
        prompts = [it.prompt for pos, it in enumerate(items) if pos not in errors]
        batch = processor(images=images, text=prompts)
    return {"items": items, "errors": errors, "sizes": sizes, "batch": batch}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one batch; threads would fight the model's


# -- inference -----------------------------------------------------------------------------------


@torch.inference_mode()
def infer(model, processor, options: RunOptions, prepared: dict[str, Any], model_name: str | None) -> list[dict]:
    """Rows for one prepared batch, in its items' order."""
    items, errors = prepared["items"], prepared["errors"]
    ok = [it for pos, it in enumerate(items) if pos not in errors]
    answers = _answers(model, processor, options, prepared, ok) if ok else []
    recorded = options.recorded()
    rows, answer = [], iter(answers)
    for pos, item in enumerate(items):
        row: dict[str, Any] = {"id": item.id, "task": options.task}
        if item.question is not None:
            row["question"] = item.question
        if pos in errors:
            row["error"] = errors[pos]
        else:
            row.update(next(answer))
        row["model"] = model_name
        row["options"] = recorded
        rows.append(row)
    return rows


def _answers(model, processor, options: RunOptions, prepared: dict[str, Any], items: list[Item]) -> list[dict]:
    head = _head(options)
    batch = model_inputs(model, processor, prepared["batch"])
    if options.task == "classify":
        labels = list(items[0].labels)
        template = options.template or getattr(processor.config, "classify_template", "{label}")
        targets = pad_rows([processor.tokenizer.encode(template.format(label=v)) for v in labels], IGNORE_INDEX)[0]
        scores = model.score(**batch, targets=targets).float().cpu()
        if options.length_normalize:
            scores = scores / (targets != IGNORE_INDEX).sum(-1)
        out = []
        for row in scores:
            ranked = head.parse(row, labels)
            out.append({"answer": ranked[0].label, "labels": [c.label for c in ranked],
                        "scores": [round(c.score, 6) for c in ranked]})
        return out
    texts = processor.batch_decode(model.generate(**batch, **generate_options(model, processor, options.generate)))
    if options.task == "detect":
        out = []
        for text, size in zip(texts, prepared["sizes"]):
            found = head.parse(text, image_size=size)
            out.append({"answer": text.strip(), "boxes": [[round(v, 2) for v in d.box] for d in found],
                        "labels": [d.label for d in found]})
        return out
    if options.task == "caption":
        return [{"answer": head.parse(t, prefix=options.prefix).text} for t in texts]
    return [{"answer": head.parse(t).text} for t in texts]


def run(
    model,
    processor,
    task: str,
    source: str | Sequence[str] | Source,
    *,
    batch_size: int = 8,
    workers: int = 0,
    skip: Iterable[str] = (),
    columns: Columns | None = None,
    split: str | None = None,
    model_name: str | None = None,
    progress: bool = False,
    lang: str = "en",
    question: str | None = None,
    labels: Sequence[str] | str | None = None,
    prefix: str = "",
    template: str | None = None,
    length_normalize: bool = False,
    **generate_kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """Run ``task`` on every input of ``source`` (anything [`open_source`][pali.data.open_source]
    takes), yielding one result dict per input (see the module docs for its keys).

    ``workers`` DataLoader processes decode and preprocess while the model runs; ``skip`` holds
    ids already done (a resumed run); ``model_name`` is recorded in each row (default: the
    model's ``name_or_path``); ``progress`` shows a tqdm bar; the remaining keywords are the
    task's options, as the one-image pipeline takes them, and generation options.
    """
    options = RunOptions(task, lang, question, list(labels) if isinstance(labels, (list, tuple)) else labels,
                         prefix, template, length_normalize, generate_kwargs)
    if options.lang and task != "detect":
        check_language(processor, options.lang)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    options.dtype = None if dtype == "float32" else dtype
    options.weights = weight_format(model)
    source = open_source(source, columns, split=split)
    name = model_name if model_name is not None else getattr(model, "name_or_path", None)
    done = set(skip)
    batches = [[it for it in b if it.id not in done] for b in plan(source, processor, options, batch_size)]
    batches = [b for b in batches if b]
    total = sum(len(b) for b in batches)
    yield from _stream(model, processor, options, source, batches, workers, name, total, progress)


def _stream(model, processor, options, source, batches, workers, name, total, progress) -> Iterator[dict]:
    from tqdm.auto import tqdm

    on_gpu = next(model.parameters()).device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        PreparedBatches(source, processor, batches), batch_size=None, shuffle=False, num_workers=workers,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
        pin_memory=on_gpu,  # page-locked batches copy to the GPU while it works
    )
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        for prepared in loader:
            rows = infer(model, processor, options, prepared, name)
            bar.update(len(rows))
            yield from rows
    finally:
        bar.close()
