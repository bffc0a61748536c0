"""``pali caption|vqa|ocr|detect|classify IMAGE ...``: one head on one image."""

from __future__ import annotations

import argparse
from dataclasses import replace

from .common import (
    add_model_argument,
    check_image_file,
    check_output,
    draw_detections,
    load_pipeline,
    open_image,
    save_image,
)


def add_parser(sub) -> None:
    p = sub.add_parser("caption", help="describe an image", description="Caption an image.")
    p.add_argument("image")
    p.add_argument("--lang", default="en", help="language code (default: en)")
    p.set_defaults(func=caption)

    p = sub.add_parser("vqa", help="answer a question about an image", description="Answer a question.")
    p.add_argument("image")
    p.add_argument("question")
    p.add_argument("--lang", default="en", help="language of the question and answer (default: en)")
    p.set_defaults(func=vqa)

    p = sub.add_parser("ocr", help="read the text in an image", description="Read the text in an image.")
    p.add_argument("image")
    p.set_defaults(func=ocr)

    p = sub.add_parser("detect", help="find objects of a class", description="Detect objects of a class.")
    p.add_argument("image")
    p.add_argument("label", help="what to look for")
    p.add_argument("--draw", metavar="IMAGE",
                   help="also write the image with the boxes drawn, in the format its suffix names (.png, .jpg, ...)")
    p.add_argument("--draw-scale", type=_positive_float, default=1.0, metavar="S",
                   help="size of the drawing relative to the input image (default: 1, the input's size)")
    p.set_defaults(func=detect)

    p = sub.add_parser("classify", help="rank candidate labels", description="Zero-shot classification.")
    p.add_argument("image")
    p.add_argument("--labels", required=True, help="comma-separated candidates, e.g. cat,dog")
    p.add_argument(
        "--template", help="target text for each label (default: the model's, from its processor config)"
    )
    p.set_defaults(func=classify)

    for parser in sub.choices.values():
        func = parser.get_default("func")
        if func in (caption, vqa, ocr, detect, classify):
            add_model_argument(parser, generates=func is not classify)


def _load(args: argparse.Namespace):
    """The pipeline and the image, decoded at no more than the scale the model needs."""
    check_image_file(args.image)  # before the model loads
    pipe = load_pipeline(args)
    return pipe, open_image(args.image, pipe.processor.config.image_size)


def caption(args: argparse.Namespace) -> int:
    pipe, image = _load(args)
    print(pipe.caption(image, lang=args.lang).text)
    return 0


def vqa(args: argparse.Namespace) -> int:
    pipe, image = _load(args)
    print(pipe.answer(image, args.question, lang=args.lang).text)
    return 0


def ocr(args: argparse.Namespace) -> int:
    pipe, image = _load(args)
    print(pipe.ocr(image).text)
    return 0


def detect(args: argparse.Namespace) -> int:
    if args.draw:
        check_output(args.draw, "--draw")
    pipe, image = _load(args)
    detections = pipe.detect(image, args.label)
    width, height = image.info["original_size"]  # a large JPEG was decoded smaller
    sx, sy = width / image.width, height / image.height
    for det in detections:
        x0, y0, x1, y1 = det.box
        print(f"{det.label}\t{x0 * sx:.0f} {y0 * sy:.0f} {x1 * sx:.0f} {y1 * sy:.0f}")
    if not detections:
        print(f"no {args.label} found")
    if args.draw:
        full = open_image(args.image) if (width, height) != image.size else image  # drawn at the input's own size
        boxes = [replace(det, box=(det.box[0] * sx, det.box[1] * sy, det.box[2] * sx, det.box[3] * sy))
                 for det in detections]
        save_image(draw_detections(full, boxes, scale=args.draw_scale), args.draw, "--draw")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 16:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 16], got {text!r}")
    return value


def classify(args: argparse.Namespace) -> int:
    pipe, image = _load(args)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    for result in pipe.classify(image, labels, template=args.template):
        print(f"{result.score:10.4f}  {result.label}")
    return 0
