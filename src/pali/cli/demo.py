"""``pali demo``: every head of the bundled model on the bundled sample images.

The samples come from the same synthetic world the demo model was trained on (a held-out seed),
so each answer is printed next to the truth.
"""

from __future__ import annotations

import argparse
import json

from .. import bundled
from .common import add_model_argument, draw_detections, load_pipeline, open_image, save_png

CAPTION_LANGS = ("en", "fr", "de", "zh", "hi")
QUESTIONS = {"en": "what color is the {shape}?", "fr": "de quelle couleur est le {shape} ?"}
SHAPE_FR = {"circle": "cercle", "square": "carré", "triangle": "triangle"}
COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="run every task head of the bundled model on sample images",
        description="Caption (5 languages), VQA, detection, OCR and classification on bundled samples.",
    )
    add_model_argument(p)
    p.add_argument("--out", default="pali-demo.png", help="PNG with the detected boxes (default: pali-demo.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    pipe = load_pipeline(args)
    samples = json.loads((bundled.SAMPLES / "samples.json").read_text())
    print(f"model {args.model}: {pipe.model.num_parameters():,} parameters\n")
    drawn = []
    for sample in samples:
        image = open_image(bundled.SAMPLES / sample["file"])
        print(f"{sample['file']}")
        if "word" in sample:
            _show("ocr", pipe.ocr(image).text, sample["word"])
            continue
        shapes = sample["shapes"]
        for lang in CAPTION_LANGS:
            _show(f"caption [{lang}]", pipe.caption(image, lang=lang).text)
        for shape in shapes:
            _show(f"vqa [en] what color is the {shape['kind']}?",
                  pipe.answer(image, QUESTIONS["en"].format(shape=shape["kind"]), lang="en").text, shape["color"])
            question = QUESTIONS["fr"].format(shape=SHAPE_FR[shape["kind"]])
            _show(f"vqa [fr] {question}", pipe.answer(image, question, lang="fr").text)
        _show("vqa [en] how many shapes are there?",
              pipe.answer(image, "how many shapes are there?", lang="en").text, str(len(shapes)))
        detections = []
        for shape in shapes:
            found = pipe.detect(image, shape["kind"])
            detections += found
            boxes = "; ".join(f"({d.box[0]:.0f}, {d.box[1]:.0f}, {d.box[2]:.0f}, {d.box[3]:.0f})" for d in found)
            _show(f"detect {shape['kind']}", boxes or "nothing", "({}, {}, {}, {})".format(*shape["box"]))
        if len(shapes) == 1:
            labels = [f"{c} {s}" for c in COLORS for s in SHAPES]
            ranked = pipe.classify(image, labels, template="a {label}")
            top = ", ".join(f"{r.label} ({r.score:.2f})" for r in ranked[:3])
            _show("classify (12 colour-shape labels)", top, f"{shapes[0]['color']} {shapes[0]['kind']}")
        drawn.append(draw_detections(image, detections))
        print()
    sheet = Image.new("RGB", (sum(d.width for d in drawn), max(d.height for d in drawn)))
    x = 0
    for picture in drawn:
        sheet.paste(picture, (x, 0))
        x += picture.width
    save_png(sheet, args.out)
    print(f"wrote {args.out} (detections drawn)")
    return 0


def _show(what: str, got: str, truth: str | None = None) -> None:
    suffix = "" if truth is None else f"   (truth: {truth})"
    print(f"  {what:<42} {got}{suffix}")
