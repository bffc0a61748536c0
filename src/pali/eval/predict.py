"""Run a model over an evaluation set, in batches, resumable: the one place ``pali eval --model``
turns images into predictions (swap it for a batch runner without touching the scorers).

``predict`` takes a ``pali.Pipeline`` and ``Request``s (id, image file, task and
its prompt arguments), skips the ids already in ``done`` (a previous, interrupted run), and calls
``save`` with everything predicted so far after each batch (at most every ``save_every`` seconds,
and at the end), so a killed run loses one batch at most.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
import time
from typing import Any

from ..data.sources import decode_image
from ..errors import InputError
from ..tasks.heads import get_head
from ..tasks.heads.base import generate_texts
from .errors import show_ids

TASKS = ("caption", "vqa", "ocr", "detect")


@dataclass(frozen=True)
class Request:
    """One prediction to make: ``task`` is a generating head's name, ``options`` its prompt
    arguments (``lang``, ``question``, ``labels``)."""

    id: Hashable
    image: Path
    task: str = "caption"
    options: dict[str, Any] = field(default_factory=dict)


def predict(pipe, requests: Iterable[Request], *, batch_size: int = 8, done: Mapping[Hashable, Any] | None = None,
            save: Callable[[dict[Hashable, Any]], None] | None = None, save_every: float = 10.0,
            progress: bool = True) -> dict[Hashable, Any]:
    """``{id: predicted text}`` (detection: ``[{"box": [x0, y0, x1, y1], "label"}]``) for every
    request; those in ``done`` are kept, not re-run."""
    from tqdm.auto import tqdm

    results = dict(done or {})
    todo = [r for r in requests if r.id not in results]
    unknown = sorted({r.task for r in todo} - set(TASKS))
    if unknown:
        raise InputError(f"cannot run tasks {unknown} for evaluation: expected {TASKS}")
    last_save = time.monotonic()
    with tqdm(total=len(todo), desc="predicting", unit="image", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = [decode_image(r.image, str(r.image)) for r in batch]
            heads = [get_head(r.task) for r in batch]
            prompts = [head.prompt(pipe.processor, **r.options) for head, r in zip(heads, batch)]
            texts = generate_texts(pipe.model, pipe.processor, images, prompts, pipe.generate_kwargs)
            for head, r, text, image in zip(heads, batch, texts, images):
                results[r.id] = _plain(head.parse(text, **head.parse_context(pipe.processor, image, r.options)))
            bar.update(len(batch))
            if save is not None and time.monotonic() - last_save >= save_every:
                save(results)
                last_save = time.monotonic()
    if save is not None:
        save(results)
    return results


def _plain(result):
    """A head's result as the scorers take it: the text, or detections as ``{"box", "label"}``."""
    if isinstance(result, list):
        return [{"box": [float(v) for v in d.box], "label": d.label} for d in result]
    return result.text


def find_images(folder: str | Path, ids: Iterable[Hashable], names: Mapping[Hashable, str] | None = None) -> dict:
    """``{id: image path}`` under ``folder``: the file name the annotations give, else a file whose
    name is the id or ends with it as a number (``COCO_val2014_000000000042.jpg`` for 42)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such image folder")
    names = names or {}
    by_stem: dict[str, Path] | None = None
    out, missing = {}, []
    for key in ids:
        name = names.get(key)
        if name and (folder / name).is_file():
            out[key] = folder / name
            continue
        if name and (folder / Path(name).name).is_file():
            out[key] = folder / Path(name).name
            continue
        if by_stem is None:
            by_stem = {}
            for p in folder.rglob("*"):
                if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"}:
                    by_stem.setdefault(p.stem, p)
                    tail = p.stem.rsplit("_", 1)[-1]
                    if tail.isdigit():
                        by_stem.setdefault(str(int(tail)), p)
        found = by_stem.get(str(key)) or (by_stem.get(str(int(key))) if str(key).isdigit() else None)
        if found is None:
            missing.append(key)
        else:
            out[key] = found
    if missing:
        raise InputError(f"{folder}: no image for {show_ids(missing)}")
    return out
