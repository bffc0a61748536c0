"""What the task subcommands share: the ``--model`` option, loading, images, atomic PNG output."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ..checkpoint import current_umask
from ..errors import InputError

DEFAULT_MODEL = "pali-demo"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"bundled model name, checkpoint folder or Hub repo id (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--max-new-tokens", type=int, default=40, help="generation length limit")


def load_pipeline(args: argparse.Namespace):
    """Model + processor from ``--model`` as one pipeline (greedy decoding)."""
    from .. import PaliModel, PaliProcessor, pipeline

    model = PaliModel.from_pretrained(args.model)
    processor = PaliProcessor.from_pretrained(args.model)
    return pipeline(model, processor, max_new_tokens=args.max_new_tokens)


def open_image(path: str | Path):
    """An RGB PIL image, or an error naming the file and what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None


def save_png(image, path: str | Path) -> None:
    """Write ``image`` to a temporary name beside ``path`` and rename: never a half-written PNG."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 is for the scratch file only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def draw_detections(image, detections, scale: int = 4):
    """A copy of ``image``, enlarged ``scale`` times, with each box outlined and labelled."""
    from PIL import ImageDraw

    canvas = image.resize((image.width * scale, image.height * scale), resample=0)
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        x0, y0, x1, y1 = (v * scale for v in det.box)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=2)
        draw.text((x0 + 3, y0 + 2), det.label, fill=(255, 255, 255))
    return canvas
