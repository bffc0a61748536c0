"""Checkpoint conversion: big_vision ``.npz``, T5X and Hugging Face checkpoints -> pali's layout.

**Naming rule.** A converted directory is ``config.json`` + safetensors (``pali.io``):

* *Tower checkpoint* (what every converter here writes, each source holding one tower):
  ``config.json`` is the tower's config with its kind (``{"kind": "vit", ...}``,
  ``{"kind": "mt5", ...}``) and tensor names are relative to the tower module
  (``patch_embed.weight``, ``encoder.layers.0.attn.q.weight``), so ``model.vision`` /
  ``model.text`` of a [`pali.PaliModel`][] load them as they are. One exception: a vision
  source that carries PaLI's projection (big_vision's ``head``) stores it under its PaliModel
  name, ``projection.weight`` / ``projection.bias``; no tower has a ``projection`` attribute, so
  pop those two names and load them into ``model.projection``.
* *Model checkpoint*: ``config.json`` is ``PaliConfig.to_json()`` and names are
  ``PaliModel.state_dict()``'s (``vision.*``, ``projection.*``, ``text.*``).

The safetensors metadata says which: ``pali.tower`` is ``"vision"``, ``"text"`` or ``"model"``;
``pali.source_format`` and ``pali.dtype`` record how a tower was converted (used by
[`verify`][pali.convert.verify]).

**Streaming.** Readers plan a conversion from metadata alone (shapes from npy headers, ``.zarray``
files, safetensors headers), check names and shapes against the target module built on the meta
device, then load, transform and write one tensor at a time. See ``docs/convert.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol
import zipfile

import torch

from ..config.base import Config, VisionConfig
from ..errors import CheckpointError
from ..io import CONFIG_NAME, atomic_directory, list_tensors, read_config, write_config_json, write_safetensors
from .big_vision import read_big_vision, split_selector
from .hf_reader import read_hf
from .plan import Conversion, parse_dtype
from .t5x import ORBAX_MARKERS, read_t5x

FORMATS = ("big_vision", "t5x", "hf")

__all__ = [
    "FORMATS", "Conversion", "convert", "convert_big_vision", "convert_hf", "convert_t5x", "detect_format",
    "load_config", "read", "read_big_vision", "read_hf", "read_t5x", "verify", "write_conversion",
]


def detect_format(path: str | Path) -> str:
    """``"big_vision"``, ``"t5x"`` or ``"hf"`` from what ``path`` looks like on disk."""
    file, _ = split_selector(path)
    if not file.exists():
        raise CheckpointError(f"{file}: no such file or directory")
    if file.is_file():
        if file.suffix == ".npz" or (zipfile.is_zipfile(file) and file.suffix != ".bin"):
            return "big_vision"
        if file.name == "checkpoint":
            return "t5x"
    else:
        t5x_markers = ("checkpoint", "state/checkpoint", *ORBAX_MARKERS)
        if any(next(file.glob(marker), None) for marker in t5x_markers):
            return "t5x"
        if (file / CONFIG_NAME).is_file():
            return "hf"
    raise CheckpointError(
        f"cannot tell the format of {path}: expected a big_vision .npz file, a T5X checkpoint_<step> "
        "directory or a Hugging Face directory with config.json; name it with format=/--format"
    )


def read(
    src: str | Path,
    format: str | None = None,
    *,
    vision_preset: str | None = None,
    text_preset: str | None = None,
    image_size: int | None = None,
    dtype: str | torch.dtype | None = None,
    check: bool = True,
) -> Conversion:
    """Plan a conversion; iterate the result for ``(our_name, tensor)`` (see the naming rule).

    ``check=False`` (transformers checkpoints, which load in place): the plan's names and shapes
    are checked by its loader, ``Conversion.check(module)`` on the module it builds anyway."""
    format = format or detect_format(src)
    if format == "hf":
        return read_hf(src, vision_preset=vision_preset, text_preset=text_preset, image_size=image_size, dtype=dtype,
                       check=check)
    if format == "big_vision":
        if text_preset is not None:
            raise CheckpointError(f"{src}: a big_vision .npz holds a vision tower; text preset {text_preset!r} given")
        return read_big_vision(src, vision_preset=vision_preset, image_size=image_size, dtype=dtype)
    if format == "t5x":
        if vision_preset is not None or image_size is not None:
            raise CheckpointError(f"{src}: a T5X checkpoint holds a text stack; vision options given")
        return read_t5x(src, text_preset=text_preset, dtype=dtype)
    raise CheckpointError(f"unknown format {format!r}; choose from {FORMATS}")


def _progress(conversion: Conversion, show: bool, desc: str):
    from tqdm import tqdm

    return tqdm(conversion, total=len(conversion.items), unit="tensor", desc=desc, disable=not show)


def write_conversion(
    conversion: Conversion, folder: Path, *, metadata: dict[str, str] | None = None,
    max_shard_size: int | str = "5GB", progress: bool = False, desc: str = "convert",
) -> None:
    """Write ``conversion`` into the existing ``folder`` in our layout: ``config.json`` and the
    safetensors shards, tensors streamed one at a time in their planned dtypes.

    The one writer of converted checkpoints: [`convert`][pali.convert.convert] and the Hub's
    conversion cache (``pali.hub.cache``) both call it, each inside its own atomic folder.
    """
    write_config_json(folder, conversion.config.to_dict())
    write_safetensors(_progress(conversion, progress, desc), folder, max_shard_size=max_shard_size, metadata={**conversion.metadata, **(metadata or {})})


class SavesFiles(Protocol):
    """What ``processor=`` accepts: anything that writes its files into an existing folder."""

    def save_pretrained(self, directory: str | Path) -> Any: ...


def convert(
    src: str | Path,
    out: str | Path,
    format: str | None = None,
    *,
    vision_preset: str | None = None,
    text_preset: str | None = None,
    image_size: int | None = None,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    max_shard_size: int | str = "5GB",
    verify: bool = False,
    progress: bool = False,
    processor: SavesFiles | None = None,
) -> Conversion:
    """Convert ``src`` into ``out`` (config.json + safetensors); returns the (checked) plan.

    The output appears only when complete (written into a temporary sibling, renamed into place);
    an existing ``out`` is refused unless ``force``. ``verify`` re-reads everything written and
    compares it with the source, bit for bit, before the rename. ``processor`` (a
    ``PaliProcessor``, say) is saved into the same folder, so ``out`` is complete for
    ``pali caption``: ``pali convert`` passes the one a transformers checkpoint ships
    (``pali.processing.processor.shipped_processor``).
    """
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} exists; pass force=True / --force to replace it")
    conversion = read(src, format, vision_preset=vision_preset, text_preset=text_preset,
                      image_size=image_size, dtype=dtype)
    dtype_name = str(conversion.dtype).removeprefix("torch.") if conversion.dtype else ""
    with atomic_directory(out, overwrite=force) as tmp:
        write_conversion(conversion, tmp, metadata={"pali.tower": conversion.tower, "pali.dtype": dtype_name},
                         max_shard_size=max_shard_size, progress=progress)
        if verify:
            _compare(conversion, tmp, progress)
        if processor is not None:
            processor.save_pretrained(tmp)
    return conversion


def convert_big_vision(src: str | Path, out: str | Path, **options) -> Conversion:
    """[`convert`][pali.convert.convert] of a big_vision ``.npz`` (``file.npz`` or ``file.npz:img``)."""
    return convert(src, out, "big_vision", **options)


def convert_t5x(src: str | Path, out: str | Path, **options) -> Conversion:
    """[`convert`][pali.convert.convert] of a T5X ``checkpoint_<step>`` directory."""
    return convert(src, out, "t5x", **options)


def convert_hf(src: str | Path, out: str | Path, **options) -> Conversion:
    """[`convert`][pali.convert.convert] of a Hugging Face model directory."""
    return convert(src, out, "hf", **options)


def load_config(directory: str | Path) -> Config:
    """The config of a pali checkpoint directory: a PaliConfig or a tower config (by ``kind``)."""
    return read_config(Path(directory), str(directory))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def _compare(conversion: Conversion, directory: Path, progress: bool = False) -> int:
    files, _ = list_tensors(directory)
    expected = {item.target for item in conversion.items}
    problems = []
    if set(files) != expected:
        problems.append(f"missing {sorted(expected - set(files))}, unexpected {sorted(set(files) - expected)}")
    for name, tensor in _progress(conversion, progress, "verify"):
        if name not in files:
            continue
        written = files[name].load()
        if not _same_bits(tensor, written):
            problems.append(f"{name}: written {written.dtype} {list(written.shape)} differs from the source "
                            f"{tensor.dtype} {list(tensor.shape)}")
    if problems:
        raise CheckpointError(f"verification of {directory} failed: " + "; ".join(problems))
    return len(expected)


def verify(src: str | Path, out: str | Path, format: str | None = None, *, progress: bool = False) -> int:
    """Compare every tensor of converted ``out`` with ``src`` (bit for bit; after the recorded cast).

    Returns the number of tensors checked; raises CheckpointError listing every difference.
    """
    out = Path(out)
    config = load_config(out)
    _, metadata = list_tensors(out)
    if metadata.get("pali.tower") not in ("vision", "text"):
        raise CheckpointError(f"{out}: not a converted tower checkpoint (metadata pali.tower missing)")
    format = format or metadata.get("pali.source_format") or None
    image_size = config.image_size if isinstance(config, VisionConfig) else None
    conversion = read(src, format, image_size=image_size, dtype=parse_dtype(metadata.get("pali.dtype") or None))
    return _compare(conversion, out, progress)

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.convert.<module> after a bare ``import pali``
