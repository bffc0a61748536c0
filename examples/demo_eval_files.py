"""Write the bundled demo model's held-out set as benchmark files, for ``pali eval``.

The examples are the ones ``train_synthetic.evaluate`` draws (same seed, same order: 100 per
caption language, then 100 per VQA language...), saved in the formats the official scorers read:

- ``images/<id>.png``;
- ``captions_<lang>.json``: COCO captions (``images`` + ``annotations``), one reference each;
- ``xm3600_captions.jsonl``: the same captions in Crossmodal-3600's layout, every language;
- ``vqa_<lang>_questions.json`` / ``vqa_<lang>_annotations.json``: VQAv2's layout, the one true
  answer given by all ten "annotators" (so VQA accuracy is exact match, as the card's).
- ``ocr.jsonl``: ``{"id", "text", "image"}`` for ``pali eval ocr``;
- ``detect_instances.json``: COCO instances, the shape each detection example asks for.

    python examples/demo_eval_files.py --out /tmp/demo-eval
    pali eval captions --model pali-demo --images /tmp/demo-eval/images \\
        --references /tmp/demo-eval/captions_en.json --predictions /tmp/demo-eval/captions_en_results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import random
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402

EVAL_SEED = 12345  # the bundled model card's evaluation seed (evaluation.json: training.eval_seed)


def write(out: Path, seed: int = EVAL_SEED, per_cell: int = 100) -> None:
    rng = random.Random(seed)
    cells = [("caption", lang) for lang in synthetic.LANGS] + [("vqa", lang) for lang in synthetic.LANGS]
    cells += [("detect", "en"), ("ocr", "en")]
    (out / "images").mkdir(parents=True, exist_ok=True)
    xm3600 = []
    for task, lang in cells:
        examples = [synthetic.make_example(rng, task, lang) for _ in range(per_cell)]
        images, annotations, questions = [], [], []
        for n, example in enumerate(examples):
            key = f"{task}-{lang}-{n:04d}"
            example.image.save(out / "images" / f"{key}.png")
            number = len(images) + 1
            images.append({"id": number, "file_name": f"{key}.png"})
            if task == "ocr":
                annotations.append({"id": key, "text": example.target, "image": f"{key}.png"})
            elif task == "detect":
                shape = next(s for s in example.shapes if s.kind == example.prompt_args["label"])
                x0, y0, x1, y1 = shape.box
                annotations.append({"id": number, "image_id": number, "category_id": synthetic.SHAPES.index(shape.kind) + 1,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
            elif task == "caption":
                annotations.append({"id": number, "image_id": number, "caption": example.target})
                xm3600.append({"image/key": key, lang: {"caption": [example.target]}})
            else:
                questions.append({"question_id": number, "image_id": key, "question": example.prompt_args["question"]})
                annotations.append({"question_id": number, "image_id": key, "question_type": "synthetic",
                                    "answer_type": "other", "answers": [
                                        {"answer": example.target, "answer_id": i + 1} for i in range(10)]})
        if task == "ocr":
            (out / "ocr.jsonl").write_text("".join(json.dumps(a) + "\n" for a in annotations))
        elif task == "detect":
            categories = [{"id": n + 1, "name": name} for n, name in enumerate(synthetic.SHAPES)]
            (out / "detect_instances.json").write_text(json.dumps(
                {"images": images, "annotations": annotations, "categories": categories}))
        elif task == "caption":
            (out / f"captions_{lang}.json").write_text(json.dumps({"images": images, "annotations": annotations},
                                                                  ensure_ascii=False))
        else:
            (out / f"vqa_{lang}_questions.json").write_text(json.dumps({"questions": questions}, ensure_ascii=False))
            (out / f"vqa_{lang}_annotations.json").write_text(json.dumps({"annotations": annotations},
                                                                         ensure_ascii=False))
    (out / "xm3600_captions.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in xm3600))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--per-cell", type=int, default=100, help="examples per task and language (default: 100)")
    args = parser.parse_args(argv)
    write(args.out, args.seed, args.per_cell)
    return 0


if __name__ == "__main__":
    sys.exit(main())
