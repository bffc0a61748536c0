"""Images in any common form -> the ``[B, 3, H, W]`` float32 batch a vision tower reads.

big_vision's PaLI input pipeline (the default): decode to RGB, resize to the model's square
resolution with antialiased bilinear interpolation (aspect ratio not kept), scale
``x / 127.5 - 1``. Here the resize is ``torch.nn.functional.interpolate(mode="bilinear",
antialias=True)`` (the same filter as PIL's ``BILINEAR``) on float pixels in [0, 1], then
``(x - 0.5) / 0.5``, which is that same scaling. Unlike big_vision we do not round the resized
image back to uint8 (a difference below 1/127.5).

Checkpoints trained with transformers' image processors (BLIP-2: bicubic, CLIP's mean/std) are
read with ``backend="pil"``: the resize is then PIL's own on the uint8 RGB image, as those
processors do it, because torch's bicubic differs from PIL's (PIL resizes one axis at a time
through a rounded uint8 image) by up to 0.2 after normalisation, and PIL's gives the pixels
the model was trained on (identical to ``BlipImageProcessor``'s). The normalisation is then
``(x * rescale_factor - mean) / std`` per channel on the 0-255 values.

Accepted images (one, a list of them, or a 4-D batch array/tensor):

* ``PIL.Image.Image`` of any mode: converted with ``convert("RGB")``.
* ``numpy.ndarray`` ``[H, W]`` (grayscale) or ``[H, W, C]`` with C in 1, 3, 4.
* ``torch.Tensor`` ``[C, H, W]`` (torch's convention) or ``[H, W, C]``; a 3-D tensor is read as
  CHW when its first dimension is 1, 3 or 4, otherwise as HWC when its last one is; ``[H, W]``
  is grayscale.

Pixel values: ``uint8`` in [0, 255] or floating point in [0, 1]; anything else (a float image in
[0, 255], NaN, inf, other integer types) is an [`InputError`][pali.InputError] rather than a silently wrong
picture. Grayscale is repeated to RGB; an alpha channel is dropped, as ``PIL.convert("RGB")`` and
big_vision's ``decode(channels=3)`` do (composite over a background yourself if you need one).

A PIL image at least twice the model's resolution on a side is first shrunk by an integer factor
with ``Image.reduce`` (a box filter, still at least twice the resolution, as PIL's ``thumbnail``
does), so a 10000 x 10000 photo never becomes a 1.2 GB float tensor on its way to 64 pixels; the
antialiased resize then sees almost the same picture (a difference of a few 1/255 steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor
CHANNELS = (1, 3, 4)
BACKENDS = ("torch", "pil")
#: Filters by name; PIL's enum values are what transformers' ``preprocessor_config.json`` stores.
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}
TORCH_RESAMPLE = ("bilinear", "bicubic")  # the antialiased filters torch's interpolate has


class ImageProcessor:
    """Resize + normalise images for a vision tower of square resolution ``image_size``.

    Defaults are PaLI's (bilinear in torch, to [-1, 1]); see the module docstring for ``backend``.
    """

    def __init__(
        self,
        image_size: int = 224,
        *,
        resample: str = "bilinear",
        backend: str = "torch",
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        rescale_factor: float = 1 / 255,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise InputError(f"image_size must be a positive int, got {image_size!r}")
        if backend not in BACKENDS:
            raise InputError(f"image backend must be one of {BACKENDS}, got {backend!r}")
        allowed = TORCH_RESAMPLE if backend == "torch" else tuple(RESAMPLE)
        if resample not in allowed:
            raise InputError(f"resample {resample!r} is not one the {backend} backend has: {allowed}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise InputError(f"mean and std need 3 channels (std > 0), got {list(mean)} and {list(std)}")
        self.image_size, self.resample, self.backend = image_size, resample, backend
        self.mean = torch.tensor([float(m) for m in mean])[:, None, None]
        self.std = torch.tensor([float(s) for s in std])[:, None, None]
        self.scale = float(rescale_factor) * 255  # on pixels in [0, 1], i.e. 0-255 values / 255

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """``[B, 3, image_size, image_size]`` float32, normalised."""
        size = (self.image_size, self.image_size)
        out = []
        for i, image in enumerate(split_batch(images)):
            if self.backend == "pil":
                rgb = self._pil_resize(image, i)
            else:
                rgb = to_rgb_tensor(self._reduce(image), index=i)
                if rgb.shape[1:] != size:
                    rgb = F.interpolate(rgb[None], size=size, mode=self.resample, antialias=True, align_corners=False)[0]
                    rgb = rgb.clamp(0, 1)  # bicubic overshoots; pixels stay pixels
            out.append((rgb * self.scale - self.mean) / self.std)
        return torch.stack(out)

    def _pil_resize(self, image: ImageLike, index: int) -> torch.Tensor:
        """PIL's resize of the uint8 RGB image (float input rounded to uint8 first)."""
        if not isinstance(image, Image.Image) or 0 in image.size:
            rgb = to_rgb_tensor(image, index=index)  # checks and converts every other form
            image = Image.fromarray((rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
        size = (self.image_size, self.image_size)
        image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, RESAMPLE[self.resample])
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255

    def _reduce(self, image: ImageLike) -> ImageLike:
        """A large PIL image shrunk by whole factors to no less than twice ``image_size``."""
        if not isinstance(image, Image.Image) or 0 in image.size:
            return image
        factors = tuple(max(1, side // (2 * self.image_size)) for side in image.size)
        return image.reduce(factors) if max(factors) > 1 else image

    def original_sizes(self, images: ImageLike | Sequence[ImageLike]) -> list[tuple[int, int]]:
        """``(height, width)`` of each image before resizing (to map boxes back onto it)."""
        return [
            (im.height, im.width) if isinstance(im, Image.Image) and 0 not in im.size
            else tuple(to_rgb_tensor(im, index=i).shape[1:])
            for i, im in enumerate(split_batch(images))
        ]


def split_batch(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image, a list/tuple of images, or a 4-D array/tensor -> a non-empty list of images."""
    batch = list(images) if is_batch(images) else [images]
    if not batch:
        raise InputError("no images given")
    return batch


def is_batch(images: ImageLike | Sequence[ImageLike]) -> bool:
    """A list/tuple of images or a 4-D array/tensor (rather than a single image)."""
    return isinstance(images, (list, tuple)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4)


def to_rgb_tensor(image: ImageLike, *, index: int = 0) -> torch.Tensor:
    """One image -> float32 ``[3, H, W]`` in [0, 1] (see the module docstring for the rules)."""
    where = f"image {index}"
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise InputError(f"{where} is empty: size {image.size}")
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255
    if isinstance(image, np.ndarray):
        if image.dtype == object or not (
            image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)
        ):
            raise InputError(f"{where}: numpy dtype {image.dtype} unsupported; use uint8 or float in [0, 1]")
        # np.asarray(pil_image) is read-only; torch would warn that it cannot share it writably
        array = np.ascontiguousarray(image)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
        hwc = True
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        hwc = tensor.ndim == 3 and tensor.shape[0] not in CHANNELS and tensor.shape[-1] in CHANNELS
    else:
        raise InputError(
            f"{where} is a {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor"
        )
    return _normalise(tensor, hwc, where)


def _normalise(tensor: torch.Tensor, hwc: bool, where: str) -> torch.Tensor:
    shape = list(tensor.shape)
    if tensor.ndim == 2:
        tensor = tensor[None]
    elif tensor.ndim == 3:
        tensor = tensor.permute(2, 0, 1) if hwc else tensor
    else:
        raise InputError(f"{where} has shape {shape}; expected [H, W], [H, W, C] or [C, H, W] (C in 1, 3, 4)")
    if tensor.shape[0] not in CHANNELS:
        raise InputError(f"{where} has shape {shape}: cannot find a channel axis of size 1, 3 or 4")
    if tensor.numel() == 0:
        raise InputError(f"{where} is empty: shape {shape}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255
    elif tensor.is_floating_point():
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise InputError(f"{where} holds NaN or inf values")
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0 or high > 1:
            raise InputError(
                f"{where}: float pixels must be in [0, 1], got [{low:g}, {high:g}]; "
                "pass uint8 for 0-255 images"
            )
    else:
        raise InputError(f"{where}: dtype {tensor.dtype} unsupported; use uint8 or float in [0, 1]")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    return tensor[:3].contiguous()
