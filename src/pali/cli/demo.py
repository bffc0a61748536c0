"""``pali demo``: every head of the bundled model on the bundled sample images.

The samples come from the same synthetic world the demo model was trained on (a held-out seed),
so each answer is printed next to the truth and a last line sums up how many were right.
"""

from __future__ import annotations

import argparse
import json

from .. import bundled
from .common import add_model_argument, check_output, draw_detections, load_pipeline, open_image, save_image

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="run every task head of the bundled model on sample images",
        description="Caption (5 languages), VQA, detection, OCR and classification on bundled samples.",
    )
    add_model_argument(p)
    p.add_argument(
        "--out", default="pali-demo.png",
        help="where to write the PNG with the detected boxes (default: pali-demo.png in the current folder)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    out = check_output(args.out, "--out").resolve()
    pipe = load_pipeline(args)
    samples = json.loads((bundled.SAMPLES / "samples.json").read_text())
    print(f"model {args.model}: {pipe.model.num_parameters():,} parameters\n")
    score = Score()
    drawn = []
    for sample in samples:
        image = open_image(bundled.SAMPLES / sample["file"])
        print(f"{sample['file']}")
        if "word" in sample:
            score.show("ocr", pipe.ocr(image).text, sample["word"])
            continue
        for item in sample["answers"]:
            if item["task"] == "caption":
                score.show(f"caption [{item['lang']}]", pipe.caption(image, lang=item["lang"]).text, item["answer"])
            else:
                got = pipe.answer(image, item["question"], lang=item["lang"]).text
                score.show(f"vqa [{item['lang']}] {item['question']}", got, item["answer"])
        shapes = sample["shapes"]
        detections = []
        for shape in shapes:
            found = pipe.detect(image, shape["kind"])
            detections += found
            score.show_box(f"detect {shape['kind']}", [d.box for d in found], shape["box"])
        if len(shapes) == 1:
            labels = [f"{c} {s}" for c in COLORS for s in SHAPES]
            ranked = pipe.classify(image, labels)  # the model's own template (its processor config)
            top = ", ".join(f"{r.label} ({r.score:.2f})" for r in ranked[:3])
            score.show("classify (12 colour-shape labels)", ranked[0].label, f"{shapes[0]['color']} {shapes[0]['kind']}",
                       shown=top)
        drawn.append(draw_detections(image, detections, scale=4))  # the 64-pixel samples, enlarged to be seen
        print()
    sheet = Image.new("RGB", (sum(d.width for d in drawn), max(d.height for d in drawn)))
    x = 0
    for picture in drawn:
        sheet.paste(picture, (x, 0))
        x += picture.width
    save_image(sheet, out, "--out")
    print(score.summary())
    print(f"wrote {args.out} (the detected boxes drawn on the samples): {out}")
    return 0


class Score:
    """Prints each answer next to the truth and keeps the tally for the closing summary line."""

    def __init__(self) -> None:
        self.right = self.asked = 0
        self.ious: list[float] = []

    def show(self, what: str, got: str, truth: str, shown: str | None = None) -> None:
        ok = got.strip() == truth
        self.right += ok
        self.asked += 1
        print(f"  {what:<42} {shown or got}   {'ok' if ok else f'(truth: {truth})'}")

    def show_box(self, what: str, found: list[tuple[float, ...]], truth: list[int]) -> None:
        from ..tasks.heads.detect import box_iou

        iou = box_iou(found[0], truth) if found else 0.0
        self.ious.append(iou)
        boxes = "; ".join("({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*box) for box in found) or "nothing"
        print(f"  {what:<42} {boxes}   (truth: ({', '.join(map(str, truth))}), IoU {iou:.2f})")

    def summary(self) -> str:
        mean_iou = sum(self.ious) / max(1, len(self.ious))
        return (f"answers matching the truth: {self.right}/{self.asked}; "
                f"detection mean IoU {mean_iou:.2f} over {len(self.ious)} boxes")
