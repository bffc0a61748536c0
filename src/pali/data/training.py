"""Training data: image + prompt -> target examples, a collator, and PaLI's weighted task mixture.

- [`ExampleDataset`][pali.data.ExampleDataset]: a map-style dataset over any source (use a
  ``DistributedSampler`` under torchrun, as with any map-style dataset).
- [`ShardStream`][pali.data.ShardStream]: webdataset shards streamed member by member (never the
  whole dataset in memory); each (rank, DataLoader worker) reads its own shards (or, with fewer
  shards than readers, its own samples), so no example is read twice in an epoch.
- [`Collator`][pali.data.Collator]: examples -> a ``PaliProcessor`` batch, the prompt of each task
  worded in the processor's prompt set, targets as ``labels`` padded with -100.
- [`TaskMixture`][pali.data.TaskMixture]: several datasets, each with its task and weight, sampled
  by weight as the paper trains (see its docs for determinism, resuming and shares).

An example is a dict: ``image`` (RGB PIL), ``task``, ``target`` (text), ``fields`` (the row's:
``question``, ``lang``, ``prompt``...), ``id`` and ``source`` (the mixture component's name).
"""

from __future__ import annotations

import glob as globlib
import io
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..processing.prompts import PromptSet
from ..tasks.heads.base import prompt_set_of
from .sources import (
    Record,
    Source,
    SourceError,
    decode_image,
    iter_shard,
    open_source,
    part_of_world,
    rank_and_world,
    shard_sample,
)

TRAIN_TASKS = ("caption", "vqa", "ocr", "detect")
#: Where each task's target is looked for in a row, first found wins (``target`` overrides all).
TARGET_FIELDS = {
    "caption": ("target", "caption", "text"), "vqa": ("target", "answer"), "ocr": ("target", "text"),
    "detect": ("target",),
}


def _check_task(task: str) -> None:
    if task not in TRAIN_TASKS:
        raise InputError(f"unknown training task {task!r}: choose from {', '.join(TRAIN_TASKS)}")


def make_example(record: Record, image, task: str, target_field: str | None, source: str = "") -> dict[str, Any]:
    """An example from a record and its decoded image (``None``: a check before training); a row
    with no target is an InputError."""
    names = (target_field,) if target_field else TARGET_FIELDS[task]
    target = next((record.fields[n] for n in names if record.fields.get(n) is not None), None)
    if not isinstance(target, str):
        raise InputError(f"{record.where}: missing the {task} target: no {' / '.join(names)} field "
                         f"(the row has: {', '.join(sorted(record.fields)) or 'only its image'})")
    return {"image": image, "task": task, "target": target, "fields": record.fields, "id": record.id,
            "source": source}


class ExampleDataset(torch.utils.data.Dataset):
    """Examples of one task from any source (folder + manifest, shards, ``datasets``...).

    ``target`` names the field holding the target text (default: the task's usual ones, see
    ``TARGET_FIELDS``); ``image_size`` lets large JPEGs decode at a reduced scale. Ids may repeat
    (several captions of one image are several examples)."""

    def __init__(self, source: Any, task: str, *, target: str | None = None, image_size: int | None = None,
                 name: str = "") -> None:
        _check_task(task)
        self.source: Source = open_source(source, unique_ids=False)
        self.task, self.target, self.image_size, self.name = task, target, image_size, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source.records[index]
        return make_example(record, self.source.image(index, self.image_size), self.task, self.target, self.name)

    def check(self, collator: Collator | None = None) -> None:
        """Read every row before training starts, decoding no pixel: each has its target, each image
        file exists and, given a ``collator``, each prompt suits its processor; the first bad row is
        an InputError naming it, rather than a stop at step 10,000 of a long run."""
        for record in self.source.records:
            example = make_example(record, None, self.task, self.target, self.name)
            if isinstance(record.image, str) and not Path(record.image).is_file():
                raise SourceError(f"{record.where}: image {record.image} not found")
            if collator is not None:
                collator.check(example, record.where)

    def endless(self, seed: int, rank: int, world: int) -> Iterator[Callable[[], dict[str, Any]]]:
        """Loaders of this rank's examples, reshuffled each epoch, forever (for the mixture)."""
        epoch = 0
        mine = list(range(rank, len(self), world))
        if not mine:
            raise SourceError(f"{self.name or 'a dataset'}: {len(self)} examples, none for rank {rank} of {world}")
        while True:
            order = mine[:]
            random.Random(f"{seed}:{self.name}:{epoch}").shuffle(order)
            for index in order:
                yield lambda index=index: self[index]
            epoch += 1


def _shard_paths(shards: str | Path | Sequence[str | Path]) -> list[str]:
    names = [shards] if isinstance(shards, (str, Path)) else list(shards)
    paths: list[str] = []
    for name in map(str, names):
        found = sorted(globlib.glob(name)) if globlib.has_magic(name) else [name]
        if not found:
            raise SourceError(f"{name}: the pattern matches no shard")
        paths += found
    missing = [p for p in paths if not Path(p).is_file()]
    if missing or not paths:
        raise SourceError(f"no such shard: {missing[0]}" if missing else "no shard given")
    return paths


class ShardStream(torch.utils.data.IterableDataset):
    """Examples of one task streamed from webdataset shards (``KEY.jpg`` + ``KEY.json``/``KEY.txt``).

    One pass is one epoch: the shards' order is shuffled by ``seed`` and the epoch (``set_epoch``),
    and each reader, rank x DataLoader worker (`pali.data.part_of_world`), takes every n-th shard,
    or every n-th sample when there are fewer shards than readers. Only the sample being read is
    in memory."""

    def __init__(self, shards: str | Path | Sequence[str | Path], task: str, *, target: str | None = None,
                 image_size: int | None = None, seed: int = 0, name: str = "") -> None:
        _check_task(task)
        self.shards = _shard_paths(shards)
        self.task, self.target, self.image_size, self.seed, self.name = task, target, image_size, seed, name
        self.epoch = 0
        self.rank_world = rank_and_world()  # here, in the training process: workers see no process group

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        part, parts = part_of_world(self.rank_world)
        for load in self._lazy(part, parts, self.epoch):
            yield load()

    def _lazy(self, part: int, parts: int, epoch: int) -> Iterator[Callable[[], dict[str, Any]]]:
        """Loaders of reader ``part``'s samples in one epoch: the shard is read, the image decoded on call."""
        shards = self.shards[:]
        random.Random(f"{self.seed}:{epoch}").shuffle(shards)
        by_shard = len(shards) >= parts
        count = 0
        for shard in shards[part::parts] if by_shard else shards:
            for key, members in iter_shard(shard, inline=True):
                count += 1
                if not by_shard and (count - 1) % parts != part:
                    continue
                record = shard_sample(shard, key, members)
                yield lambda record=record: self._example(record)

    def _example(self, record: Record) -> dict[str, Any]:
        image = decode_image(io.BytesIO(record.image), record.where, self.image_size)
        return make_example(record, image, self.task, self.target, self.name)

    def endless(self, seed: int, rank: int, world: int) -> Iterator[Callable[[], dict[str, Any]]]:
        """This rank's loaders, epoch after epoch (for the mixture)."""
        epoch = 0
        while True:
            empty = True
            for load in self._lazy(rank, world, epoch):
                empty = False
                yield load
            if empty:
                raise SourceError(f"{self.name or self.shards[0]}: no sample for rank {rank} of {world}")
            epoch += 1


# -- the collator --------------------------------------------------------------------------------


def train_prompt(example: dict[str, Any], prompts: PromptSet) -> str:
    """The prompt of an example: its own ``prompt`` field, else its task's in ``prompts``."""
    fields, task = example["fields"], example["task"]
    if isinstance(fields.get("prompt"), str) and fields["prompt"].strip():
        return fields["prompt"]
    lang = fields.get("lang") or "en"
    if task == "caption":
        return prompts.caption_prompt(lang)
    if task == "vqa":
        question = fields.get("question")
        if not isinstance(question, str):
            raise InputError(f"{example['id']}: a vqa example needs a question field")
        return prompts.vqa_prompt(question, lang)
    if task == "ocr":
        return prompts.ocr_prompt(lang)
    labels = fields.get("labels") or []
    return prompts.detect_prompt(labels)


class Collator:
    """Examples -> ``PaliProcessor`` batch (``pixel_values``, ``input_ids``, ``attention_mask``,
    ``labels`` with -100 padding), each prompt worded in the processor's prompt set."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.prompts = prompt_set_of(processor)
        self._suitable: set[str] = set()  # prompts check() found the tokenizer can encode

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.processor(
            images=[e["image"] for e in examples],
            text=[self.prompt(e) for e in examples],
            suffix=[e["target"] for e in examples],
        )

    def prompt(self, example: dict[str, Any]) -> str:
        """The prompt ``example`` trains with: its own ``prompt`` field, else its task's in this
        processor's prompt set (in its ``lang``)."""
        return train_prompt(example, self.prompts)

    def check(self, example: dict[str, Any], where: str) -> None:
        """An InputError naming ``where`` when the example's prompt does not encode with this
        processor (a PaLI prompt's ``<extra_id_0>`` for a BLIP-2 tokenizer without sentinels)."""
        prompt = self.prompt(example)
        if prompt in self._suitable:
            return
        try:
            self.processor(text=prompt)
        except InputError as e:
            own = prompt == example["fields"].get("prompt")
            hint = f"; leave \"prompt\" out to use the model's own {example['task']} prompt" if own else ""
            raise InputError(f"{where}: prompt {prompt!r} does not suit this {self.prompts.name} model: "
                             f"{e}{hint}") from None
        self._suitable.add(prompt)


# -- the mixture ---------------------------------------------------------------------------------


@dataclass
class Component:
    """One mixture member: ``data`` (an ``ExampleDataset`` or ``ShardStream``), its ``weight``."""

    name: str
    data: ExampleDataset | ShardStream
    weight: float


class TaskMixture(torch.utils.data.IterableDataset):
    """Endless examples drawn from ``components`` with probability proportional to their weights.

    Deterministic: step ``n`` of a rank draws from the component that a ``random.Random`` seeded
    by ``(seed, rank)`` picks the n-th time, and takes that component's next example (each
    component cycles through its own part of the data, reshuffled each epoch). Under torchrun each
    rank samples its own part of every component. With DataLoader workers, worker ``w`` makes
    the batches ``w, w + W, ...`` (of ``batch_size``, the DataLoader's), which the DataLoader hands
    out in order: the stream is the same for any number of workers. (Each worker reads a
    streaming component's bytes to keep its place; only its own examples' images are decoded.)

    Resuming: ``state_dict(steps)`` after ``steps`` examples consumed on this rank (``None``: the
    ones this object yielded itself, without workers), ``load_state_dict`` to continue from there.
    ``shares(steps)``: how many examples each component gave, against its weight.
    """

    def __init__(self, components: Sequence[Component | tuple[str, Any, float]], *, seed: int = 0,
                 batch_size: int = 1) -> None:
        self.components = [c if isinstance(c, Component) else Component(*c) for c in components]
        if not self.components:
            raise InputError("a mixture needs at least one component")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise InputError(f"mixture component names must differ: {names}")
        bad = [c.name for c in self.components if not (c.weight > 0)]
        if bad:
            raise InputError(f"mixture weights must be > 0: {bad}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        for c in self.components:
            c.data.name = c.data.name or c.name
        self.seed, self.batch_size = seed, batch_size
        self.rank_world = rank_and_world()
        self.start = 0  # the step this rank resumes from
        self.yielded = 0

    def _chooser(self, rank: int) -> Callable[[], int]:
        rng = random.Random(f"{self.seed}:{rank}")
        indices = list(range(len(self.components)))
        weights = [c.weight for c in self.components]
        return lambda: rng.choices(indices, weights)[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.rank_world
        choose = self._chooser(rank)
        streams = [c.data.endless(self.seed, rank, world) for c in self.components]
        for _ in range(self.start):  # replay to the saved step: draw and skip, no image decoded
            next(streams[choose()])
        step = self.start
        while True:
            load = next(streams[choose()])
            if (step // self.batch_size) % workers == worker:
                self.yielded += 1
                yield load()
            step += 1

    def state_dict(self, steps: int | None = None) -> dict[str, Any]:
        """The position after ``steps`` examples consumed on this rank (a multiple of ``batch_size``
        when workers make the batches)."""
        steps = self.start + self.yielded if steps is None else steps
        return {"seed": self.seed, "step": steps, "components": [c.name for c in self.components]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("components") != [c.name for c in self.components] or state.get("seed") != self.seed:
            raise InputError(f"this state is of another mixture (seed {state.get('seed')}, components "
                             f"{state.get('components')}); this one has seed {self.seed}, {[c.name for c in self.components]}")
        self.start, self.yielded = int(state["step"]), 0

    def shares(self, steps: int | None = None, rank: int = 0) -> dict[str, dict[str, float]]:
        """Per component: ``examples`` drawn in the first ``steps`` of ``rank``, their ``share``, and
        the ``weight`` share asked for."""
        steps = self.start + self.yielded if steps is None else steps
        choose = self._chooser(rank)
        counts = [0] * len(self.components)
        for _ in range(steps):
            counts[choose()] += 1
        total_weight = sum(c.weight for c in self.components)
        return {
            c.name: {"examples": n, "share": n / steps if steps else 0.0, "weight": c.weight / total_weight}
            for c, n in zip(self.components, counts)
        }
