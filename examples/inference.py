"""Every task head from Python: caption, VQA, OCR, detection and classification.

    python examples/inference.py IMAGE [--model pali-demo]
"""

from __future__ import annotations

import argparse
import sys

import pali
from pali.cli import run_script
from pali.cli.common import open_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--model", default="pali-demo", help="bundled name, checkpoint folder or Hub repo id")
    args = parser.parse_args(argv)
    image = open_image(args.image)  # a missing or unreadable file is named before the model loads

    model = pali.PaliModel.from_pretrained(args.model)
    processor = pali.PaliProcessor.from_pretrained(args.model)
    pipe = pali.pipeline(model, processor)

    for lang in ("en", "fr", "de", "zh", "hi"):
        print(f"caption [{lang}]:", pipe.caption(image, lang=lang).text)
    print("answer:", pipe.answer(image, "how many shapes are there?").text)
    print("ocr:", pipe.ocr(image).text)
    for shape in ("circle", "square", "triangle"):
        print(f"detect {shape}:", [(d.label, tuple(round(v) for v in d.box)) for d in pipe.detect(image, shape)])
    labels = [f"{color} {shape}" for color in ("red", "green", "blue", "yellow") for shape in ("circle", "square", "triangle")]
    best = pipe.classify(image, labels, template="a {label}")[:3]
    print("classify:", [(c.label, round(c.score, 2)) for c in best])
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
