"""``pali eval``: score predictions against a benchmark's published files, optionally running a model first.

    pali eval captions --references captions_val2014.json --predictions results.json
    pali eval vqa --questions Q.json --annotations A.json --predictions results.json
    pali eval xm3600 --references captions.jsonl --predictions preds.jsonl
    pali eval ocr --references ocr.jsonl --predictions preds.jsonl
    pali eval detect --references instances_val2017.json --predictions detections.json
    pali eval jsonl data.jsonl --metric captions

Each prints a table, or with ``--json`` one JSON object under the official scorer's keys;
``--per-item FILE`` writes each item's scores (JSONL). With ``--model M --images DIR`` the model
first predicts whatever ``--predictions`` does not hold yet (batched, resumable), saving them there
in the format the official scorers read, and the metrics beside them (``<predictions>.metrics.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..defaults import MAX_NEW_TOKENS
from .common import positive

METRICS = ("captions", "vqa", "anls", "ocr", "classify")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score predictions on a benchmark (captions, VQA, XM3600, OCR, detection)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    c = kinds.add_parser("captions", help="CIDEr, BLEU-1..4, ROUGE-L (COCO Captions, NoCaps, TextCaps)")
    c.add_argument("--references", required=True, help="COCO captions_*.json or a Karpathy dataset_*.json")
    c.add_argument("--split", default="test", help="Karpathy split to score (default: test)")
    c.add_argument("--tokenizer", choices=["python", "ptb"], default="python",
                   help="python: built-in PTB-equivalent (no Java); ptb: pycocoevalcap's PTBTokenizer (needs java)")
    c.add_argument("--lang", default="en", help="caption language asked of the model with --model (default: en)")
    _common(c, "COCO results JSON [{\"image_id\", \"caption\"}]")
    c.set_defaults(func=run_captions)

    v = kinds.add_parser("vqa", help="VQA accuracy as the official VQAv2 script (VQAv2, OK-VQA, TextVQA, VizWiz)")
    v.add_argument("--annotations", required=True, help="annotations JSON (VQAv2/OK-VQA, TextVQA or VizWiz format)")
    v.add_argument("--questions", help="questions JSON (VQAv2/OK-VQA; needed with --model)")
    v.add_argument("--lang", default="en", help="answer language asked of the model with --model (default: en)")
    _common(v, "results JSON [{\"question_id\", \"answer\"}]")
    v.set_defaults(func=run_vqa)

    x = kinds.add_parser("xm3600", help="Crossmodal-3600: CIDEr per language and averaged")
    x.add_argument("--references", required=True, help="XM3600 captions.jsonl")
    x.add_argument("--languages", help="comma-separated languages to score (default: all in the predictions)")
    x.add_argument("--segmentation", choices=["characters", "tokenized"], default="characters",
                   help="characters: zh/ja/th split into characters (default); tokenized: the release's "
                        "caption/tokenized references, predictions split on their spaces")
    _common(x, "JSONL {\"id\", \"lang\", \"prediction\"}")
    x.set_defaults(func=run_xm3600)

    o = kinds.add_parser("ocr", help="OCR exact match, character error rate and ANLS")
    o.add_argument("--references", required=True, help="JSONL {\"id\", \"text\", \"image\"?}")
    o.add_argument("--lang", default="en", help="language asked of the model with --model (default: en)")
    _common(o, "JSONL {\"id\", \"prediction\"}")
    o.set_defaults(func=run_ocr)

    d = kinds.add_parser("detect", help="detection mAP@0.5 (pycocotools) and mean IoU")
    d.add_argument("--references", required=True, help="COCO instances_*.json")
    _common(d, "COCO detection results [{\"image_id\", \"category_id\", \"bbox\", \"score\"}]")
    d.set_defaults(func=run_detect)

    j = kinds.add_parser("jsonl", help="any metric over one JSONL of {\"id\", \"prediction\", \"references\"}")
    j.add_argument("file", help="JSONL lines {\"id\", \"prediction\", \"references\"}")
    j.add_argument("--metric", choices=METRICS, required=True)
    j.add_argument("--tokenizer", choices=["python", "ptb"], default="python", help="for --metric captions")
    _common(j, None, model=False)
    j.set_defaults(func=run_jsonl)


def _common(p: argparse.ArgumentParser, predictions: str | None, model: bool = True) -> None:
    if predictions is not None:
        p.add_argument("--predictions", required=True,
                       help=predictions + ("; with --model, where predictions are saved (and resumed from)" if model else ""))
    p.add_argument("--json", action="store_true", help="print one JSON object (the official keys) instead of a table")
    p.add_argument("--per-item", metavar="FILE", help="write each item's scores to FILE (JSONL)")
    p.add_argument("--allow-partial", action="store_true",
                   help="score the ids that have a prediction (the report says how many) instead of failing")
    if model:
        g = p.add_argument_group("running a model first")
        g.add_argument("--model", help="bundled model name, checkpoint folder or Hub repo id: predict first")
        g.add_argument("--images", help="folder of the benchmark's images (with --model)")
        g.add_argument("--batch-size", type=positive, default=8, metavar="N", help="images per batch (default: 8)")
        g.add_argument("--threads", type=positive, metavar="N", help="CPU threads for torch")
        g.add_argument("--max-new-tokens", type=positive, default=MAX_NEW_TOKENS, metavar="N",
                       help=f"longest output in tokens (default: {MAX_NEW_TOKENS}, as PaliModel.generate's)")
        g.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- running a model ------------------------------------------------------------------------------


def _images(args) -> str:
    from ..errors import InputError

    if not args.images:
        raise InputError("--model needs --images: the folder holding the benchmark's images")
    return args.images


def _run_model(args, requests, existing: dict, save) -> dict:
    """Predictions for every request, starting from ``existing`` (a resumed run)."""
    from ..eval.predict import predict
    from .common import load_pipeline

    pipe = load_pipeline(args)
    return predict(pipe, requests, batch_size=args.batch_size, done=existing, save=save,
                   progress=not args.no_progress)


def _write_json(path: Path, value: Any, lines: bool = False) -> None:
    from ..io import atomic_file

    text = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in value) if lines else \
        json.dumps(value, ensure_ascii=False, indent=1) + "\n"
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))


def _existing(path: Path, reader) -> dict:
    return reader(path) if path.is_file() else {}


# -- reporting ------------------------------------------------------------------------------------


def _report(args, result, predictions: dict | None = None, table_rows=None) -> int:
    out = result.to_json()
    if getattr(args, "model", None):
        _write_json(Path(args.predictions).with_suffix(".metrics.json"), out)
    if args.per_item:
        rows = []
        for key, scores in result.per_item.items():
            row = {"lang": key[0], "id": key[1]} if isinstance(key, tuple) else {"id": key}
            row.update(scores)
            if predictions is not None:
                row["prediction"] = predictions.get(key[1] if isinstance(key, tuple) else key)
            rows.append(row)
        _write_json(Path(args.per_item), rows, lines=True)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    rows = table_rows(out) if table_rows else [(k, v) for k, v in out.items() if k not in ("scored", "total")]
    width = max(len(str(k)) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    coverage = result.coverage
    if coverage is not None:
        note = f" (--allow-partial: {coverage.total - coverage.scored} had no prediction)" if coverage.partial else ""
        print(f"scored {coverage.scored} of {coverage.total}{note}")
    return 0


# -- the benchmarks -------------------------------------------------------------------------------


def run_captions(args) -> int:
    from ..eval.captions import score_captions
    from ..eval.formats import read_caption_references, read_caption_results

    refs = read_caption_references(args.references, args.split)
    path = Path(args.predictions)
    if args.model:
        from ..eval.predict import Request, find_images  # imports torch: only when a model runs

        images = find_images(_images(args), refs.captions, refs.images)
        requests = [Request(k, images[k], "caption", {"lang": args.lang}) for k in refs.captions]
        save = lambda done: _write_json(path, [{"image_id": k, "caption": v} for k, v in done.items()])  # noqa: E731
        predictions = _run_model(args, requests, _existing(path, read_caption_results), save)
    else:
        predictions = read_caption_results(path)
    result = score_captions(predictions, refs.captions, tokenizer=args.tokenizer, allow_partial=args.allow_partial)
    return _report(args, result, predictions)


def run_vqa(args) -> int:
    from ..errors import InputError
    from ..eval.formats import read_vqa_references, read_vqa_results
    from ..eval.vqa import score_vqa

    refs = read_vqa_references(args.annotations, args.questions)
    path = Path(args.predictions)
    if args.model:
        from ..eval.predict import Request, find_images  # imports torch: only when a model runs

        unasked = [k for k in refs.annotations if not refs.questions.get(k, (None, ""))[1]]
        if unasked:
            raise InputError(f"--model: {len(unasked)} questions have no text; give the questions file (--questions)")
        image_of = {k: refs.questions[k][0] for k in refs.annotations}
        found = find_images(_images(args), set(image_of.values()),
                            {v: v for v in image_of.values() if isinstance(v, str)})
        requests = [Request(k, found[image_of[k]], "vqa", {"question": refs.questions[k][1], "lang": args.lang})
                    for k in refs.annotations]
        save = lambda done: _write_json(path, [{refs.key: k, "answer": v} for k, v in done.items()])  # noqa: E731
        predictions = _run_model(args, requests, _existing(path, read_vqa_results), save)
    else:
        predictions = read_vqa_results(path)
    result = score_vqa(predictions, refs.annotations, allow_partial=args.allow_partial)

    def rows(out):
        yield "overall", f"{out['overall']:.2f}"  # the script's two places
        for kind in ("perAnswerType", "perQuestionType"):
            for name, value in sorted(out[kind].items()):
                yield f"{kind} {name}", f"{value:.2f}"

    return _report(args, result, predictions, lambda out: list(rows(out)))


def run_xm3600(args) -> int:
    from ..eval.formats import read_language_predictions, read_xm3600_references
    from ..eval.xm3600 import score_xm3600

    languages = [lang.strip() for lang in args.languages.split(",")] if args.languages else None
    refs = read_xm3600_references(args.references, languages, tokenized=args.segmentation == "tokenized")
    path = Path(args.predictions)
    if args.model:
        from ..eval.predict import Request, find_images  # imports torch: only when a model runs

        langs = languages or sorted(refs)
        keys = sorted({k for lang in langs for k in refs[lang]}, key=str)
        images = find_images(_images(args), keys, {k: f"{k}.jpg" for k in keys})
        requests = [Request((lang, k), images[k], "caption", {"lang": lang}) for lang in langs for k in refs[lang]]
        previous = {(lang, k): v for lang, d in _existing(path, read_language_predictions).items() for k, v in d.items()}
        save = lambda done: _write_json(  # noqa: E731
            path, [{"id": k, "lang": lang, "prediction": v} for (lang, k), v in done.items()], lines=True)
        flat = _run_model(args, requests, previous, save)
        predictions: dict = {}
        for (lang, k), v in flat.items():
            predictions.setdefault(lang, {})[k] = v
    else:
        predictions = read_language_predictions(path)
    if languages:
        predictions = {lang: v for lang, v in predictions.items() if lang in languages}
        refs = {lang: refs[lang] for lang in languages}
    else:
        refs = {lang: refs[lang] for lang in refs if lang in predictions or not args.allow_partial}
    result = score_xm3600(predictions, refs, segmentation=args.segmentation, allow_partial=args.allow_partial)

    def rows(out):
        for lang, value in out["CIDEr"].items():
            yield f"CIDEr {lang}", value
        yield "CIDEr_avg", out["CIDEr_avg"]
        if "CIDEr_avg_non_en" in out:
            yield "CIDEr_avg_non_en", out["CIDEr_avg_non_en"]

    return _report(args, result, None, lambda out: list(rows(out)))


def run_ocr(args) -> int:
    from ..eval.errors import AnnotationFormatError
    from ..eval.formats import read_jsonl_predictions, read_jsonl_references
    from ..eval.text import score_anls, score_ocr

    refs = read_jsonl_references(args.references, "text")
    bad = [k for k, v in refs.references.items() if not isinstance(v, str)]
    if bad:
        raise AnnotationFormatError(f"{args.references}: field 'text' should be a string (ids {bad[:5]})")
    path = Path(args.predictions)
    if args.model:
        from ..eval.predict import Request, find_images  # imports torch: only when a model runs

        images = find_images(_images(args), refs.references, refs.images)
        requests = [Request(k, images[k], "ocr", {"lang": args.lang}) for k in refs.references]
        save = lambda done: _write_json(path, [{"id": k, "prediction": v} for k, v in done.items()], lines=True)  # noqa: E731
        predictions = _run_model(args, requests, _existing(path, read_jsonl_predictions), save)
    else:
        predictions = read_jsonl_predictions(path)
    result = score_ocr(predictions, refs.references, allow_partial=args.allow_partial)
    similarity = score_anls(predictions, {k: [v] for k, v in refs.references.items()}, allow_partial=args.allow_partial)
    result.metrics["ANLS"] = similarity.metrics["ANLS"]
    for key, scores in similarity.per_item.items():
        result.per_item[key].update(scores)
    return _report(args, result, predictions)


def run_detect(args) -> int:
    from ..eval.detection import score_detection
    from ..eval.errors import UnknownIdsError, show_ids
    from ..eval.formats import read_coco_detection

    path = Path(args.predictions)
    found, truth, files, categories = read_coco_detection(args.references, path if path.is_file() else None)
    if args.model:
        from ..eval.predict import Request, find_images  # imports torch: only when a model runs

        # Each image is asked for the classes it holds (PaLI's "detect cat ; dog" prompt), as the
        # demo's evaluation does; a COCO-wide protocol would ask for every class.
        images = find_images(_images(args), truth, files)
        requests = [Request(k, images[k], "detect", {"labels": sorted({b["label"] for b in truth[k]})})
                    for k in truth if truth[k]]
        ids = {name: i for i, name in categories.items()}

        def save(done):
            rows = [{"image_id": k, "category_id": ids[b["label"]], "score": 1.0,
                     "bbox": [b["box"][0], b["box"][1], b["box"][2] - b["box"][0], b["box"][3] - b["box"][1]]}
                    for k, boxes in done.items() for b in boxes if b["label"] in ids]
            _write_json(path, rows)

        found = _run_model(args, requests, found, save)
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    unknown = [k for k in found if k not in truth]
    if unknown:
        raise UnknownIdsError(f"{args.predictions}: {show_ids(unknown)} are not among the references' images")
    # COCO results list only the boxes found: an image without a line had no detection, as COCOeval reads it.
    predictions = {k: [b for b in found.get(k, []) if b["label"] in categories.values()] for k in truth}
    return _report(args, score_detection(predictions, truth, allow_partial=args.allow_partial))


def run_jsonl(args) -> int:
    from ..eval import captions, classification, text, vqa
    from ..eval.formats import read_jsonl_references

    data = read_jsonl_references(args.file)
    score = {
        "captions": lambda p, r, partial: captions.score_captions(p, r, tokenizer=args.tokenizer, allow_partial=partial),
        "vqa": lambda p, r, partial: vqa.score_vqa(p, r, allow_partial=partial),
        "anls": lambda p, r, partial: text.score_anls(p, r, allow_partial=partial),
        "ocr": lambda p, r, partial: text.score_ocr(p, r, allow_partial=partial),
        "classify": lambda p, r, partial: classification.score_classification(p, r, allow_partial=partial),
    }[args.metric]
    return _report(args, score(data.predictions, data.references, args.allow_partial), data.predictions)
