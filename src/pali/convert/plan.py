"""A conversion as a plan: every output tensor's name, shape and loader, checked before any read.

Readers list a checkpoint's tensors as ``Source`` (name, shape, loader) from its metadata
alone (npy headers, ``.zarray`` files, safetensors headers). A key map turns them into
``Item`` (our name, shape after the transform, loader that transforms), the output shape being
computed by running the transform on a ``meta`` tensor. The plan is then checked against the
target module, built on the meta device from the config: unknown and missing names and every
shape mismatch are reported together, before a byte of weights is read or written. Iterating a
``Conversion`` then loads, transforms and yields one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import torch

from ..config.base import Config, PaliConfig, VisionConfig
from ..config.presets import get_config
from ..config.registry import PRESETS, TEXT_STACKS, VISION_ENCODERS
from ..errors import CheckpointError
from ..io import check_num_parameters
from ..models.pali import PaliModel
from ..nn.meta import meta_device
from ..nn.pos_embed import resample_pos_embed
from .keymap import KeyMap, Transform

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
PROJECTION = "projection."  # the one model-level name a vision tower checkpoint may carry


@dataclass(frozen=True)
class Source:
    """One tensor of a foreign checkpoint, not yet read (``dtype``: when its header says it)."""

    name: str
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class Item:
    """One output tensor: our name, its shape, and how to produce it from the source.

    Transforms keep the dtype. An item is a ``pali.io.loading.Weight``: a model loads
    from a plan as it loads from our own files, each tensor renamed and reshaped as it is read.
    """

    target: str
    source: str
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    dtype: torch.dtype | None = None

    def then(self, transform: Transform) -> "Item":
        """This item with ``transform`` applied after its own."""
        shape = _shape_after(transform, self.shape, self.source)
        return replace(self, shape=shape, load=lambda: transform(self.load()))


def _shape_after(transform: Transform | None, shape: tuple[int, ...], source: str) -> tuple[int, ...]:
    """The shape ``transform`` makes of ``shape``, found on the meta device (no memory)."""
    if transform is None:
        return shape
    try:
        return tuple(transform(torch.empty(shape, device="meta")).shape)
    except (RuntimeError, IndexError, ValueError) as e:  # a kernel of the wrong rank, say
        raise CheckpointError(f"tensor {source!r} of shape {list(shape)} does not have the expected layout ({e})") from None


def _loader(source: Source, transform: Transform | None) -> Callable[[], torch.Tensor]:
    return source.load if transform is None else (lambda: transform(source.load()))


def map_sources(sources: Sequence[Source], keymap: KeyMap) -> list[Item]:
    """Rename and reshape every source; unknown names are listed in one error."""
    items, unknown, seen = [], [], {}
    for source in sources:
        try:
            target, transform = keymap.map(source.name)
        except KeyError:
            unknown.append(source.name)
            continue
        if target is None:
            continue
        if target in seen:
            raise CheckpointError(f"{keymap.name}: {seen[target]!r} and {source.name!r} both map to {target!r}")
        seen[target] = source.name
        shape = _shape_after(transform, source.shape, source.name)
        items.append(Item(target, source.name, shape, _loader(source, transform), source.dtype))
    if unknown:
        raise CheckpointError(f"{keymap.name}: {len(unknown)} unexpected tensors: {sorted(unknown)}")
    return items


def fit_pos_embed(items: list[Item], config: VisionConfig) -> list[Item]:
    """Resample ``pos_embed`` to ``config``'s grid (a no-op, bit for bit, when it already fits)."""
    prefix = int(getattr(config, "class_token", False))

    def fit(t: torch.Tensor) -> torch.Tensor:
        return resample_pos_embed(t, config.grid, num_prefix_tokens=prefix)

    out = []
    for item in items:
        if item.target == "pos_embed":
            tokens = item.shape[1] - prefix if len(item.shape) == 3 else -1
            if tokens != config.grid**2 and int(tokens**0.5) ** 2 != tokens:
                raise CheckpointError(
                    f"{item.source}: position embedding {list(item.shape)} is not a square grid; cannot resample "
                    f"to {config.grid}x{config.grid}"
                )
            item = item.then(fit)
        out.append(item)
    return out


def fit_lm_head(items: list[Item], *, tied: bool, scale: float | None, prefix: str = "") -> list[Item]:
    """The text stack's ``lm_head``, whatever the checkpoint's tying.

    A head in the checkpoint is kept as it is (untied). Where there is none and the config
    declares the head ``tied`` (transformers leaves a tied head out of its files), the embedding
    is read for it; an untied config without a head stays a missing tensor (``check_items``
    names it). ``scale`` is T5's factor on the decoder output before the head
    (``pali.convert.hf.decoder_output_scale``), folded into the head's weights:
    ``W (s x) = (s W) x``, so the text stack needs no switch for it.
    """
    head, embed = prefix + "lm_head.weight", prefix + "embed.weight"
    found = {item.target: item for item in items}
    if tied and head not in found and embed in found:
        items = [*items, replace(found[embed], target=head, source=f"{found[embed].source} (tied head)")]
    if scale is None:
        return items
    return [item.then(lambda t: (t.float() * scale).to(t.dtype)) if item.target == head else item for item in items]


def _module(config: Config) -> torch.nn.Module:
    """The module ``config`` describes: a whole PaliModel or one tower."""
    if isinstance(config, PaliConfig):
        return PaliModel(config)
    registry = VISION_ENCODERS if isinstance(config, VisionConfig) else TEXT_STACKS
    return registry.get(config.kind)(config)


def check_items(items: Sequence[Item], config: Config, against: str, module: torch.nn.Module | None = None) -> None:
    """Compare the planned tensors with the module ``config`` builds: names and shapes, all at once.

    ``against`` names the reference in messages ("preset 'vit-b16'", "the inferred config").
    ``module``: that module already built on the meta device (a loader that fills it passes it,
    so it is not built twice).
    """
    if module is None:
        with meta_device():
            module = _module(config)
    check_num_parameters(module, against)
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    problems = []
    planned = {item.target for item in items}
    missing = sorted(set(expected) - planned)
    if missing:
        problems.append(f"missing tensors {missing}")
    for item in items:
        if item.target.startswith(PROJECTION) and isinstance(config, VisionConfig):
            want = config.width
            got = item.shape[-1] if item.target.endswith("weight") else None
            if got is not None and got != want:
                problems.append(
                    f"{item.target} (from {item.source!r}): input width {got}, {against} has width {want}"
                )
        elif item.target not in expected:
            problems.append(f"unexpected tensor {item.target!r} (from {item.source!r})")
        elif item.shape != expected[item.target]:
            problems.append(
                f"{item.target} (from {item.source!r}): checkpoint gives {list(item.shape)}, "
                f"{against} expects {list(expected[item.target])}"
            )
    if problems:
        raise CheckpointError(f"checkpoint does not match {against}: " + "; ".join(problems))


@dataclass
class Conversion:
    """A checked plan; iterate it for ``(our_name, tensor)`` pairs, one tensor in memory at a time.

    ``config`` is the tower's config; names are relative to that tower, plus ``projection.*``
    (PaliModel-level) when a vision source carries PaLI's projection. A whole-model source
    (BLIP-2) has a [`PaliConfig`][pali.PaliConfig] and PaliModel's names.
    """

    config: Config
    items: list[Item]
    metadata: dict[str, str] = field(default_factory=dict)
    dtype: torch.dtype | None = None
    #: What the plan is checked against, in messages; ``checked`` is False for a plan read with
    #: ``check=False``, whose loader calls ``check(module)`` on the module it builds anyway.
    against: str = ""
    checked: bool = True

    def check(self, module: torch.nn.Module | None = None) -> None:
        """Names and shapes against ``module`` (``config``'s module built on the meta device),
        before any tensor is read (``check_items``)."""
        check_items(self.items, self.config, self.against, module)
        self.checked = True

    @property
    def tower(self) -> str:
        """``"vision"``, ``"text"`` or ``"model"`` (the safetensors ``pali.tower`` metadata)."""
        if isinstance(self.config, PaliConfig):
            return "model"
        return "vision" if isinstance(self.config, VisionConfig) else "text"

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for item in self.items:
            tensor = item.load()
            if tuple(tensor.shape) != item.shape:  # the plan was made from headers: hold the data to them
                raise CheckpointError(
                    f"{item.source}: read {list(tensor.shape)}, its header said {list(item.shape)}: corrupt checkpoint"
                )
            if self.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            yield item.target, tensor

    def weights(self) -> dict[str, Item]:
        """Our name -> its planned tensor, for a model loading in place
        (``pali.io.loading.build_model``): the same mapping ``__iter__`` writes out."""
        return {item.target: item for item in self.items}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything at once, for small checkpoints and tests."""
        return dict(self)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    return DTYPES[dtype]


def target_config(
    inferred: Config, family: str, preset: str | None = None, image_size: int | None = None
) -> tuple[Config, str]:
    """The config to convert to, and how to name it in messages.

    ``inferred`` comes from the checkpoint itself (its config.json or its tensor shapes). A
    ``preset`` replaces it (keeping the checkpoint's resolution); the plan is then checked against
    the preset. ``image_size`` asks for a new resolution: position embeddings get resampled.
    """
    config, against = inferred, "the config inferred from the checkpoint"
    if preset is not None:
        found = PRESETS.get(preset).family
        if found != family:
            raise CheckpointError(f"preset {preset!r} is a {found} preset; this checkpoint holds a {family} tower")
        config, against = get_config(preset), f"preset {preset!r}"
        if family == "vision":
            config = config.replace(image_size=inferred.image_size)
    if image_size is not None:
        if family != "vision":
            raise CheckpointError("image_size only applies to vision towers")
        config = config.replace(image_size=image_size)
    return config, against
