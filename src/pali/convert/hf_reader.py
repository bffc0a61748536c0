"""Hugging Face checkpoint directories -> our towers, streamed one tensor at a time.

A HF directory holds ``config.json`` and weights as ``model.safetensors`` (or shards with
``model.safetensors.index.json``) or ``pytorch_model.bin`` (or shards with
``pytorch_model.bin.index.json``). safetensors go through ``pali.io`` (headers
checked first, then each tensor mapped from the file, nothing copied: a model loads from such a
folder in place, ``reads_in_place``); ``.bin`` files are loaded with ``mmap=True,
weights_only=True`` so their tensors page in on use. ``config.json``'s ``model_type`` picks the
key map: mT5/T5 v1.1, SigLIP, CLIP (vision towers, also out of two-tower checkpoints) or ViT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import blip2, hf
from ..errors import CheckpointError, ConfigError
from ..io import CONFIG_NAME, INDEX_NAME, SINGLE_NAME, check_shape, checked_file, index_shards, list_tensors, read_json
from .keymap import KeyMap
from .plan import Conversion, Source, fit_lm_head, fit_pos_embed, map_sources, parse_dtype, target_config

BIN_NAME = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# model_type -> (family, key map, config function)
MODEL_TYPES: dict[str, tuple[str, KeyMap, Callable[[dict], Any]]] = {
    "mt5": ("text", hf.MT5, hf.mt5_config),
    "t5": ("text", hf.MT5, hf.mt5_config),
    "siglip": ("vision", hf.SIGLIP_VISION, hf.siglip_vision_config),
    "siglip_vision_model": ("vision", hf.SIGLIP_VISION, hf.siglip_vision_config),
    "clip": ("vision", hf.CLIP_VISION, hf.clip_vision_config),
    "clip_vision_model": ("vision", hf.CLIP_VISION, hf.clip_vision_config),
    "vit": ("vision", hf.HF_VIT, hf.hf_vit_config),
}


def _safetensors_sources(directory: Path) -> list[Source]:
    entries, _ = list_tensors(directory)  # headers only, shapes bounded; each tensor read on demand
    return [Source(name, entry.shape, entry.load, entry.dtype) for name, entry in entries.items()]


def _bin_sources(directory: Path) -> list[Source]:
    index = directory / BIN_INDEX
    files = index_shards(checked_file(directory, BIN_INDEX, str(directory))) if index.exists() else [BIN_NAME]
    sources = []
    for name in files:
        path = checked_file(directory, name, str(index if index.exists() else directory))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # pickle/zip errors of a corrupt or non-zip (pre-1.6) file
            raise CheckpointError(f"{path}: cannot load ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict")
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{path}: entries {bad[:5]!r} are not named tensors")
        for k, v in state.items():
            check_shape(list(v.shape), v.element_size(), f"{path}: {k}")
        sources += [Source(k, tuple(v.shape), lambda v=v: v, v.dtype) for k, v in state.items()]
    return sources


def reads_in_place(path: Path) -> bool:
    """Whether ``path`` is a transformers folder with safetensors weights: what a model loads in
    place (each tensor mapped, renamed and reshaped as it is read), with no converted copy."""
    return path.is_dir() and (path / CONFIG_NAME).is_file() \
        and ((path / SINGLE_NAME).exists() or (path / INDEX_NAME).exists())


def hf_sources(directory: Path) -> list[Source]:
    """Every tensor of a HF checkpoint directory, not yet read."""
    if (directory / SINGLE_NAME).exists() or (directory / INDEX_NAME).exists():
        return _safetensors_sources(directory)
    if (directory / BIN_NAME).exists() or (directory / BIN_INDEX).exists():
        return _bin_sources(directory)
    raise CheckpointError(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}, nor {BIN_NAME}(.index.json) found")


def read_hf_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (needed to know the model type)")
    config = read_json(checked_file(directory, CONFIG_NAME, str(directory)))
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str) \
            or config["model_type"] not in MODEL_TYPES:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}: model_type {found!r} is not supported; known: {sorted([*MODEL_TYPES, *blip2.MODEL_TYPES])}")
    return config


def read_hf(
    src: str | Path,
    *,
    vision_preset: str | None = None,
    text_preset: str | None = None,
    image_size: int | None = None,
    dtype: str | torch.dtype | None = None,
    check: bool = True,
) -> Conversion:
    """Plan the conversion of a Hugging Face checkpoint directory (mT5, SigLIP, CLIP or ViT towers;
    whole BLIP-2 / InstructBLIP models, see ``pali.convert.blip2``).

    ``check=False`` leaves the names-and-shapes check to the caller (``Conversion.check(module)``):
    a model loading in place builds the module anyway."""
    directory = Path(src)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    raw = read_json(checked_file(directory, CONFIG_NAME, str(directory))) if (directory / CONFIG_NAME).is_file() else None
    if blip2.is_blip2(raw):
        if vision_preset or text_preset or image_size:
            raise CheckpointError(f"{directory} holds a whole {raw['model_type']} model: tower presets and image_size do not apply")
        return _read_blip2(directory, raw, dtype=dtype, check=check)
    hf_config = read_hf_config(directory)
    family, keymap, config_fn = MODEL_TYPES[hf_config["model_type"]]
    preset, other = (vision_preset, text_preset) if family == "vision" else (text_preset, vision_preset)
    if other is not None:
        raise CheckpointError(f"{directory} holds a {family} tower; preset {other!r} was given for the other tower")
    try:
        inferred = config_fn(hf_config)
        inferred.validate()
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{directory / 'config.json'}: missing or malformed field {e}") from None
    except ConfigError as e:
        raise CheckpointError(f"{directory / 'config.json'}: {e}") from None
    config, against = target_config(inferred, family, preset, image_size)
    items = map_sources(hf_sources(directory), keymap)
    if family == "vision":
        items = fit_pos_embed(items, config)
    else:
        version = hf_config.get("transformers_version")
        items = fit_lm_head(items, tied=hf.head_tied(hf_config, version),
                            scale=hf.decoder_output_scale(hf_config, version))
    return _checked(Conversion(config, items, {"pali.source_format": "hf"}, parse_dtype(dtype), against), check)


def _read_blip2(
    directory: Path, hf_config: Mapping[str, Any], *, dtype: str | torch.dtype | None, check: bool
) -> Conversion:
    """Plan the conversion of a BLIP-2 / InstructBLIP directory; config first, then the weights."""
    config = blip2.blip2_config(hf_config)  # refuses unsupported text models before any weight is read
    items = blip2.plan_items(config, hf_config, hf_sources(directory))
    against = f"the {hf_config['model_type']} config"
    return _checked(Conversion(config, items, {"pali.source_format": "hf"}, parse_dtype(dtype), against), check)


def _checked(conversion: Conversion, check: bool) -> Conversion:
    if check:
        conversion.check()
    else:
        conversion.checked = False
    return conversion
