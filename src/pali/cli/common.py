"""What the task subcommands share: ``--model``/``--threads``, loading, images, atomic image output.

Nothing here imports torch at module level: ``pali --help`` and argument errors are answered
before any model code is imported.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from ..defaults import MAX_NEW_TOKENS
from ..errors import InputError

DEFAULT_MODEL = "pali-demo"
#: Below this many parameters a model runs fastest on one thread: its matrices are too small
#: for the threads to share the work, and each extra thread only adds waiting (worse on a busy machine).
SMALL_MODEL = 20_000_000


def add_model_argument(parser: argparse.ArgumentParser, *, generates: bool = True) -> None:
    """``--model`` and ``--threads``; ``--max-new-tokens`` for the commands that generate text."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"bundled model name, checkpoint folder or Hub repo id (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--threads", type=positive, metavar="N",
        help=f"CPU threads for torch (default: 1 for models under {SMALL_MODEL // 10**6}M parameters, "
        "such as the bundled one; otherwise torch's default)",
    )
    if generates:
        parser.add_argument(
            "--max-new-tokens", type=positive, metavar="N", default=MAX_NEW_TOKENS,
            help=f"longest answer in tokens (default: {MAX_NEW_TOKENS}, as PaliModel.generate's)",
        )


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def load_pipeline(args: argparse.Namespace):
    """Model + processor from ``--model`` as one pipeline (greedy decoding), on ``--threads``."""
    import torch

    from ..pretrained import PaliModel
    from ..processing.processor import PaliProcessor
    from ..tasks.pipeline import pipeline

    if args.threads:
        cores = os.cpu_count()
        if cores and args.threads > cores:
            warnings.warn(f"--threads {args.threads} is more than the {cores} CPU cores here: "
                          "the extra threads only wait on each other", stacklevel=2)
        torch.set_num_threads(args.threads)
    model = PaliModel.from_pretrained(args.model)
    if not args.threads and model.num_parameters() < SMALL_MODEL:
        torch.set_num_threads(1)
    processor = PaliProcessor.from_pretrained(args.model)
    options = {"max_new_tokens": args.max_new_tokens} if hasattr(args, "max_new_tokens") else {}
    return pipeline(model, processor, **options)


def open_image(path: str | Path, size: int | None = None):
    """An RGB PIL image, or an error naming the file and what is wrong with it.

    ``size``: the model's resolution. A large JPEG is then decoded at a reduced scale (PIL's
    ``draft``, at least twice ``size`` on each side), which saves most of the decoding memory;
    the image's ``info["original_size"]`` keeps ``(width, height)`` as stored. Other formats are
    reduced by the image processor after decoding.
    """
    from PIL import Image, UnidentifiedImageError

    path = check_image_file(path)
    try:
        with Image.open(path) as image:
            original = image.size
            if size is not None and image.format == "JPEG":
                image.draft("RGB", (2 * size, 2 * size))
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as e:
        raise InputError(
            f"{path}: too large to decode safely ({e}); shrink it first, or raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None
    rgb.info["original_size"] = original
    return rgb


def check_image_file(path: str | Path) -> Path:
    """``path`` if it is a file; otherwise an error saying what it is instead (a folder gets
    pointed to ``pali run``, which reads many images)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(
            f"{path}: is a folder; this command reads one image file (for a folder of images, use pali run)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    return path


def check_output(path: str | Path, option: str) -> Path:
    """Fail before any inference when an output image cannot be written where asked, or its
    suffix names no image format."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name such as {path / 'out.png'}")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{option} {path}: folder {folder} is not writable")
    image_format(path, option)
    return path


def image_format(path: str | Path, option: str) -> str:
    """The PIL format the suffix of an output ``path`` names (``.jpg`` -> JPEG), checked before any
    inference: an unknown suffix is an error, not a PNG under another name."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"{option} {path}: cannot tell an image format from the suffix {suffix or '(none)'!r}; "
                         "use .png, .jpg, .webp, ...")
    return fmt


def save_image(image, path: str | Path, option: str = "output") -> None:
    """Write ``image`` in the format its suffix names through ``pali.io.atomic_file``: never a
    half-written file."""
    from ..io import atomic_file

    fmt = image_format(path, option)
    with atomic_file(path) as f:
        image.save(f, format=fmt)


def draw_detections(image, detections, scale: float = 1.0):
    """A copy of ``image``, resized ``scale`` times, with each box outlined and labelled.

    Boxes are white lines between black ones and labels white letters with a black edge, so they
    show on any background, light or dark; line width and letter size follow the picture's size.
    """
    from PIL import Image, ImageDraw, ImageFont

    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS  # small demo images stay crisp
    canvas = image.convert("RGB").resize(size, resample=resample) if size != image.size else image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(size) / 250))
    edge = width  # black on each side of the white line
    font = ImageFont.load_default(size=max(10, round(min(size) / 30)))
    for det in detections:
        x0, y0, x1, y1 = (v * scale for v in det.box)
        draw.rectangle((x0 - edge, y0 - edge, x1 + edge, y1 + edge), outline=(0, 0, 0), width=width + 2 * edge)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=width)
        draw.text((x0 + 2 * width + 2, y0 + 2 * width + 1), det.label, fill=(255, 255, 255), font=font,
                  stroke_width=max(1, width), stroke_fill=(0, 0, 0))
    return canvas
