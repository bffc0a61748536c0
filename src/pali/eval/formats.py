"""Readers for the files the benchmarks publish and the official scorers take, in their own shapes.

Each reader returns plain ``{id: ...}`` mappings for the metric functions, plus what running a
model needs (image file names, questions). Every malformed entry is an
``AnnotationFormatError`` naming the file, the entry and the field;
two predictions for one id are a ``DuplicateIdsError``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any

from .errors import AnnotationFormatError, DuplicateIdsError, show_ids
from .ids import unique
from .vqa import VqaAnnotation


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise AnnotationFormatError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise AnnotationFormatError(f"{path}, line {n}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise AnnotationFormatError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        except UnicodeDecodeError as e:
            raise AnnotationFormatError(f"{path}: not UTF-8 text ({e})") from None
    return rows


def field_of(row: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``row[key]``, checked to be a ``kind``; the error names ``where`` and the field."""
    if not isinstance(row, dict):
        raise AnnotationFormatError(f"{where}: expected an object, got {type(row).__name__}")
    if key not in row:
        raise AnnotationFormatError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AnnotationFormatError(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def _list_of(data: Any, key: str | None, path: Path) -> list:
    items = data if key is None else (data.get(key) if isinstance(data, dict) else None)
    if not isinstance(items, list):
        shape = f"an object with a {key!r} list" if key else "a list"
        raise AnnotationFormatError(f"{path}: expected {shape}, got {type(items if key else data).__name__}")
    return items


ID = (int, str)


@dataclass
class CaptionReferences:
    """``captions``: ``{image id: [references]}``; ``images``: ``{image id: file name}`` (may be empty)."""

    captions: dict[Hashable, list[str]]
    images: dict[Hashable, str] = field(default_factory=dict)


def read_caption_references(path: str | Path, split: str | None = "test") -> CaptionReferences:
    """COCO ``captions_*.json`` (``images`` + ``annotations``; NoCaps too), a Karpathy-split
    ``dataset_*.json`` (``images`` with ``sentences``; only the images of ``split``, ids ``cocoid``
    if present else ``imgid``) or TextCaps' ``TextCaps_0.1_*.json`` (``data`` rows with
    ``reference_strs``)."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and "data" in data and "images" not in data:
        return _read_textcaps(data, path)
    images = _list_of(data, "images", path)
    if "annotations" in data:
        captions: dict[Hashable, list[str]] = {}
        files = {}
        for n, image in enumerate(images):
            key = field_of(image, "id", ID, f"{path}: images[{n}]")
            files[key] = image.get("file_name", "")
            captions.setdefault(key, [])
        for n, ann in enumerate(_list_of(data, "annotations", path)):
            where = f"{path}: annotations[{n}]"
            key = field_of(ann, "image_id", ID, where)
            captions.setdefault(key, []).append(field_of(ann, "caption", str, where))
        empty = [k for k, v in captions.items() if not v]
        if empty:  # nothing to score them against: an image-info file, or a truncated one
            raise AnnotationFormatError(f"{path}: {show_ids(empty)} are listed in 'images' with no caption in "
                                        "'annotations'")
        return CaptionReferences(captions, files)
    captions, files = {}, {}
    for n, image in enumerate(images):
        where = f"{path}: images[{n}]"
        if split is not None and field_of(image, "split", str, where) != split:
            continue
        key = image["cocoid"] if "cocoid" in image else field_of(image, "imgid", ID, where)
        sentences = field_of(image, "sentences", list, where)
        captions[key] = [field_of(s, "raw", str, f"{where}.sentences[{i}]") for i, s in enumerate(sentences)]
        name = field_of(image, "filename", str, where)
        files[key] = f"{image['filepath']}/{name}" if image.get("filepath") else name
    if not captions:
        raise AnnotationFormatError(f"{path}: no image of split {split!r} (Karpathy splits: train, restval, val, test)")
    return CaptionReferences(captions, files)


def _read_textcaps(data: dict, path: Path) -> CaptionReferences:
    """TextCaps: one row per (image, caption), each holding all of the image's ``reference_strs``."""
    captions: dict[Hashable, list[str]] = {}
    files = {}
    for n, row in enumerate(_list_of(data, "data", path)):
        where = f"{path}: data[{n}]"
        key = field_of(row, "image_id", ID, where)
        references = field_of(row, "reference_strs", list, where)
        if not references or not all(isinstance(r, str) for r in references):
            raise AnnotationFormatError(f"{where}: 'reference_strs' should be a non-empty list of strings")
        if captions.setdefault(key, references) != references:
            raise AnnotationFormatError(f"{where}: image_id {key!r} has other reference_strs in an earlier row")
        files[key] = row.get("image_path") or f"{key}.jpg"
    return CaptionReferences(captions, files)


def read_caption_results(path: str | Path) -> dict[Hashable, str]:
    """COCO results: ``[{"image_id": ..., "caption": ...}]``."""
    path = Path(path)
    rows = _list_of(read_json(path), None, path)
    return unique(((field_of(r, "image_id", ID, f"{path}[{n}]"), field_of(r, "caption", str, f"{path}[{n}]"))
                   for n, r in enumerate(rows)), f"{path}: image_id")


@dataclass
class VqaReferences:
    """``annotations``: ``{question id: VqaAnnotation}``; ``questions``: ``{question id: (image, question)}``,
    ``image`` an image id (VQAv2/OK-VQA/TextVQA) or file name (VizWiz)."""

    annotations: dict[Hashable, VqaAnnotation]
    questions: dict[Hashable, tuple[Any, str]] = field(default_factory=dict)
    key: str = "question_id"  # what the results file keys answers by ("image" for VizWiz)


def read_vqa_references(annotations: str | Path, questions: str | Path | None = None) -> VqaReferences:
    """The VQA annotation files as published: VQAv2 / OK-VQA (``annotations`` + a questions file),
    TextVQA (``data`` with ``answers`` strings and the question inline), VizWiz (a list keyed by
    ``image``)."""
    path = Path(annotations)
    data = read_json(path)
    out = VqaReferences({})
    if isinstance(data, dict) and "annotations" in data:
        for n, ann in enumerate(_list_of(data, "annotations", path)):
            where = f"{path}: annotations[{n}]"
            key = field_of(ann, "question_id", ID, where)
            records = field_of(ann, "answers", list, where)
            answers = tuple(field_of(a, "answer", str, f"{where}.answers[{i}]") for i, a in enumerate(records))
            others = tuple(tuple(sorted((k, json.dumps(v)) for k, v in a.items() if k != "answer")) for a in records)
            if key in out.annotations:
                raise AnnotationFormatError(f"{where}: question_id {key!r} annotated twice")
            out.annotations[key] = VqaAnnotation(answers, ann.get("answer_type"), ann.get("question_type"), others)
            out.questions[key] = (ann.get("image_id"), "")
        if questions is not None:
            qpath = Path(questions)
            for n, q in enumerate(_list_of(read_json(qpath), "questions", qpath)):
                where = f"{qpath}: questions[{n}]"
                key = field_of(q, "question_id", ID, where)
                out.questions[key] = (q.get("image_id"), field_of(q, "question", str, where))
        return out
    rows = _list_of(data, "data", path) if isinstance(data, dict) else _list_of(data, None, path)
    vizwiz = bool(rows) and isinstance(rows[0], dict) and "question_id" not in rows[0] and "image" in rows[0]
    out.key = "image" if vizwiz else "question_id"
    for n, row in enumerate(rows):
        where = f"{path}: {'' if vizwiz else 'data'}[{n}]"
        key = field_of(row, "image" if vizwiz else "question_id", ID, where)
        answers = field_of(row, "answers", list, where)
        if answers and isinstance(answers[0], dict):  # VizWiz: records
            texts = tuple(field_of(a, "answer", str, f"{where}.answers[{i}]") for i, a in enumerate(answers))
            others = tuple(tuple(sorted((k, json.dumps(v)) for k, v in a.items() if k != "answer")) for a in answers)
        else:  # TextVQA: strings, one per annotator
            if not all(isinstance(a, str) for a in answers):
                raise AnnotationFormatError(f"{where}: field 'answers' should be a list of strings or of answer objects")
            texts, others = tuple(answers), None
        if key in out.annotations:
            raise AnnotationFormatError(f"{where}: id {key!r} annotated twice")
        out.annotations[key] = VqaAnnotation(texts, row.get("answer_type"), row.get("question_type"), others)
        out.questions[key] = (row.get("image" if vizwiz else "image_id"), row.get("question", ""))
    return out


def read_vqa_results(path: str | Path) -> dict[Hashable, str]:
    """``[{"question_id": ..., "answer": ...}]`` (VizWiz: ``"image"`` in place of ``question_id``)."""
    path = Path(path)
    rows = _list_of(read_json(path), None, path)
    key = "image" if rows and isinstance(rows[0], dict) and "question_id" not in rows[0] and "image" in rows[0] \
        else "question_id"
    return unique(((field_of(r, key, ID, f"{path}[{n}]"), field_of(r, "answer", str, f"{path}[{n}]"))
                   for n, r in enumerate(rows)), f"{path}: {key}")


def read_xm3600_references(path: str | Path, languages: list[str] | None = None,
                           tokenized: bool = False) -> dict[str, dict[Hashable, list[str]]]:
    """Crossmodal-3600's ``captions.jsonl``: one image per line, ``{"image/key": ..., "<lang>":
    {"caption": [...], "caption/tokenized": [...]}, ...}`` -> ``{lang: {image key: [captions]}}``."""
    path = Path(path)
    out: dict[str, dict[Hashable, list[str]]] = {}
    for n, row in enumerate(read_jsonl(path), 1):
        where = f"{path}, line {n}"
        key = field_of(row, "image/key", ID, where)
        for lang, entry in row.items():
            if lang == "image/key" or (languages and lang not in languages):
                continue
            name = "caption/tokenized" if tokenized else "caption"
            captions = field_of(entry, name, list, f"{where}, {lang}")
            if not all(isinstance(c, str) for c in captions):
                raise AnnotationFormatError(f"{where}, {lang}: {name!r} should be a list of strings")
            if key in out.setdefault(lang, {}):
                raise AnnotationFormatError(f"{where}: image/key {key!r} appears twice")
            out[lang][key] = captions
    missing = sorted(set(languages or ()) - set(out))
    if missing:
        raise AnnotationFormatError(f"{path}: no captions in languages {missing}")
    return out


def read_language_predictions(path: str | Path) -> dict[str, dict[Hashable, str]]:
    """JSONL ``{"id": image key, "lang": ..., "prediction": caption}`` -> ``{lang: {id: caption}}``."""
    path = Path(path)
    rows = read_jsonl(path)
    out: dict[str, list] = {}
    for n, row in enumerate(rows, 1):
        where = f"{path}, line {n}"
        out.setdefault(field_of(row, "lang", str, where), []).append(
            (field_of(row, "id", ID, where), field_of(row, "prediction", str, where)))
    return {lang: unique(pairs, f"{path}: id in {lang}") for lang, pairs in out.items()}


@dataclass
class JsonlReferences:
    """Generic JSONL: ``references`` per id, ``images`` (file names, if given) and ``predictions``
    (if the lines carry them)."""

    references: dict[Hashable, Any]
    images: dict[Hashable, str] = field(default_factory=dict)
    prompts: dict[Hashable, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[Hashable, Any] = field(default_factory=dict)


def read_jsonl_references(path: str | Path, reference_key: str = "references") -> JsonlReferences:
    """Lines ``{"id", "references", "prediction"?, "image"?, "question"?, "lang"?}``."""
    path = Path(path)
    out = JsonlReferences({})
    pairs = []
    for n, row in enumerate(read_jsonl(path), 1):
        where = f"{path}, line {n}"
        key = field_of(row, "id", ID, where)
        if key in out.references:
            raise DuplicateIdsError(f"{where}: id {key!r} appears twice")
        if reference_key not in row:
            raise AnnotationFormatError(f"{where}: missing field {reference_key!r}")
        out.references[key] = row[reference_key]
        if "image" in row:
            out.images[key] = field_of(row, "image", str, where)
        out.prompts[key] = {k: row[k] for k in ("question", "lang") if k in row}
        if "prediction" in row:
            pairs.append((key, row["prediction"]))
    out.predictions = unique(pairs, f"{path}: id")
    return out


def read_jsonl_predictions(path: str | Path) -> dict[Hashable, Any]:
    """Lines ``{"id", "prediction"}``."""
    path = Path(path)
    return unique(((field_of(r, "id", ID, f"{path}, line {n}"), r.get("prediction"))
                   for n, r in enumerate(read_jsonl(path), 1)), f"{path}: id")


def read_coco_detection(references: str | Path, predictions: str | Path | None):
    """COCO ``instances_*.json`` and a COCO detection results file (``[{"image_id", "category_id",
    "bbox": [x, y, w, h], "score"}]``) -> ``({id: [box]}, {id: [box]}, {id: file name}, {category id:
    name})`` with boxes ``{"box": [x0, y0, x1, y1], "label": category name, "score"}``."""
    path = Path(references)
    data = read_json(path)
    names = {field_of(c, "id", int, f"{path}: categories[{n}]"): field_of(c, "name", str, f"{path}: categories[{n}]")
             for n, c in enumerate(_list_of(data, "categories", path))}
    files, truth = {}, {}
    for n, image in enumerate(_list_of(data, "images", path)):
        key = field_of(image, "id", ID, f"{path}: images[{n}]")
        files[key] = image.get("file_name", "")
        truth[key] = []

    def box(row, where):
        bbox = field_of(row, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise AnnotationFormatError(f"{where}: bbox should be [x, y, width, height], got {bbox!r}")
        category = field_of(row, "category_id", int, where)
        if category not in names:
            raise AnnotationFormatError(f"{where}: category_id {category} is not among {path}'s categories")
        return {"box": [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]], "label": names[category]}

    for n, ann in enumerate(_list_of(data, "annotations", path)):
        where = f"{path}: annotations[{n}]"
        key = field_of(ann, "image_id", ID, where)
        if key not in truth:
            raise AnnotationFormatError(f"{where}: image_id {key!r} is not among the images")
        if not ann.get("iscrowd"):
            truth[key].append(box(ann, where))
    found: dict[Hashable, list] = {}
    if predictions is not None:
        ppath = Path(predictions)
        for n, row in enumerate(_list_of(read_json(ppath), None, ppath)):
            where = f"{ppath}[{n}]"
            item = box(row, where)
            item["score"] = float(field_of(row, "score", (int, float), where)) if "score" in row else 1.0
            found.setdefault(field_of(row, "image_id", ID, where), []).append(item)
    return found, truth, files, names
