"""Seed a PaLI from public unimodal checkpoints, as the paper did.

Each tower source (Hub repo id, local transformers directory, or a JAX checkpoint path) is opened
by `pali.hub.cache`: transformers safetensors (SigLIP, ViT, CLIP, mT5) are read in place through
their `pali.convert` plan, nothing written; ``.bin``, big_vision ``.npz`` and T5X are converted
once into our single-tower layout (``config.json`` with the tower's ``kind`` + tower-relative
safetensors) in a cache keyed by the source's identity (Hub commit hash, or path + size + mtime
of every file), and the second load reads the cache. The towers are then loaded into a
meta-built [`pali.PaliModel`][] exactly like ``from_pretrained``; the projection (and any tower
without weights) is freshly initialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
import warnings

import torch

from ..config.base import Config, PaliConfig, TextConfig, VisionConfig
from ..config.presets import get_config
from ..convert import Conversion
from ..convert.big_vision import split_selector
from ..errors import CheckpointError, ConfigError
from ..io import list_tensors, read_config
from ..io.loading import Weight, common_dtype, materialize, verify
from ..nn.meta import meta_device
from .cache import entry_folder, open_source
from .download import Snapshot, fetch, transformers_files

ROLES = ("vision", "text")
_CONFIG_TYPES = {"vision": VisionConfig, "text": TextConfig}


@dataclass(frozen=True)
class Recipe:
    """Public checkpoints that seed a paper preset; ``vision=None``: no public tower exists."""

    preset: str
    text: str
    vision: str | None
    note: str = ""


BIGG = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
RECIPES: dict[str, Recipe] = {
    "pali-3b": Recipe("pali-3b", text="google/mt5-large", vision=BIGG,
                      note="OpenCLIP ViT-bigG/14 has ViT-G/14's shape (CLIP layout)"),
    "pali-15b": Recipe("pali-15b", text="google/mt5-xxl", vision=BIGG,
                       note="OpenCLIP ViT-bigG/14 has ViT-G/14's shape (CLIP layout)"),
    "pali-17b": Recipe("pali-17b", text="google/mt5-xxl", vision=None,
                       note="ViT-e/14 weights were never released: the vision tower is randomly initialised"),
}


def list_recipes() -> dict[str, Recipe]:
    """Which presets [`PaliModel.from_unimodal`][pali.PaliModel.from_unimodal] can seed from
    public checkpoints, and from what."""
    return dict(RECIPES)


@dataclass(frozen=True)
class Tower:
    """One tower to load: read in place through ``plan``, or from ``folder`` (our tower layout)."""

    role: str
    folder: Path | None
    config: Config
    record: dict[str, Any]  # provenance: tower, source, revision, format, license
    plan: Conversion | None = None

    def weights(self) -> dict[str, Weight]:
        """Tower-relative name -> tensor to load (plus ``projection.*`` when the source carries it)."""
        if self.plan is not None:
            return self.plan.weights()
        entries, _ = list_tensors(self.folder)
        return entries


def seed_from_towers(
    cls: type, preset_or_config: str | PaliConfig | None, sources: dict[str, tuple[str | Path | None, str | None]],
    *, fetch_options: dict[str, Any], dtype: torch.dtype | None, device: str | torch.device | None,
) -> Any:
    """The work of ``PaliModel.from_unimodal``: ``sources`` maps a role to ``(source, revision)``."""
    base = _base_config(preset_or_config)
    recipe = RECIPES.get(preset_or_config) if isinstance(preset_or_config, str) else None
    if recipe is not None:
        sources = {role: (getattr(recipe, role) if src is None else src, rev) for role, (src, rev) in sources.items()}
    towers = {
        role: converted_tower(role, src, revision=rev, **fetch_options)
        for role, (src, rev) in sources.items() if src is not None
    }
    config = _compose(base, towers)
    random_roles = [r for r in ROLES if r not in towers]
    for role in random_roles:
        why = recipe.note if recipe is not None and getattr(recipe, role) is None else "no checkpoint was given"
        warnings.warn(
            f"the {role} tower of {config.preset or 'this model'} is randomly initialised ({why})", stacklevel=3
        )
    with meta_device():
        model = cls(config)
    entries = {}
    for role, tower in towers.items():
        if tower.plan is not None:  # read in place: its names and shapes against the tower built above
            tower.plan.check(getattr(model, role))
        tower_entries = tower.weights()
        # pali.convert's rule: a vision source that carries PaLI's projection stores it under
        # its PaliModel name; it seeds the projection when its shape fits.
        carried = {n: tower_entries.pop(n) for n in list(tower_entries) if n.startswith("projection.")}
        source = f"{role} tower from {tower.record['source']}"
        tower_entries = verify(tower_entries, getattr(model, role).state_dict(), source=source, strict=True)
        entries.update({f"{role}.{name}": e for name, e in tower_entries.items()})
        if carried:
            try:
                entries.update(verify(carried, model.projection.state_dict(prefix="projection."),
                                      source=f"projection carried by {tower.record['source']}", strict=True))
            except CheckpointError as e:
                warnings.warn(f"{e}; the projection is freshly initialised instead", stacklevel=3)
    materialize(model, entries, device=torch.device(device or "cpu"), dtype=dtype or common_dtype(entries))
    model.weight_sources = [t.record for t in towers.values()] + [
        {"tower": role, "source": "random init", "revision": None, "format": None, "license": None}
        for role in random_roles
    ]
    return model


def _base_config(preset_or_config: str | PaliConfig | None) -> PaliConfig | None:
    if preset_or_config is None or isinstance(preset_or_config, PaliConfig):
        return preset_or_config
    config = get_config(preset_or_config)
    if not isinstance(config, PaliConfig):
        raise ConfigError(f"preset {preset_or_config!r} is a single tower; from_unimodal needs a PaLI preset")
    return config


def _compose(base: PaliConfig | None, towers: dict[str, Tower]) -> PaliConfig:
    """The model's config: each tower's architecture from its checkpoint, checked against ``base``."""
    if base is None:
        missing = [r for r in ROLES if r not in towers]
        if missing:
            raise ConfigError(
                f"from_unimodal without a preset or config needs both towers; {missing} not given "
                "(the architecture is read from the checkpoints)"
            )
        return PaliConfig(vision=towers["vision"].config, text=towers["text"].config)
    changes = {}
    for role, tower in towers.items():
        _check_fits(getattr(base, role), tower, base.preset)
        changes[role] = tower.config
    return base.replace(**changes)


def _check_fits(wanted: Config, tower: Tower, preset: str | None) -> None:
    got = tower.config
    what = f"{tower.role} checkpoint {tower.record['source']}"
    target = f"preset {preset!r}" if preset else "the given config"
    if got.kind != wanted.kind:
        raise ConfigError(f"{what} is a {got.kind!r} tower; {target} wants {wanted.kind!r}")
    # Each tower names the fields that fix its parameter shapes (Config.shape_fields): a
    # checkpoint may differ from a preset's tower in layout (OpenCLIP's class token and pre-norm
    # for ViT-G/14) but not in these.
    a, b = wanted.shape(), got.shape()
    diff = [f"{f}: {b[f]} (wanted {a[f]})" for f in a if a[f] != b[f]]
    if diff:
        raise ConfigError(f"{what} does not have the shape of {target}'s {tower.role} tower: " + ", ".join(diff))


# -- opening the sources (pali.hub.cache) ------------------------------------------------------


def converted_tower(
    role: str,
    source: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Tower:
    """The tower ``source``: in place, or converted into the cache on the first call only."""
    snapshot = _fetch_source(source, revision, cache_dir, local_files_only, token)
    opened = open_source(role, snapshot, entry_folder(role, snapshot, cache_dir))
    if opened.plan is not None:
        config = opened.plan.config
    else:
        try:
            config = read_config(opened.folder, str(opened.folder))
        except ConfigError as e:
            raise CheckpointError(f"{snapshot.source} is not a {role} tower: {e}") from None
    if not isinstance(config, _CONFIG_TYPES[role]):
        raise CheckpointError(f"{snapshot.source} is not a {role} tower: it holds a {type(config).__name__}")
    return Tower(role, opened.folder, config, opened.record, opened.plan)


def _fetch_source(source, revision, cache_dir, local_files_only, token) -> Snapshot:
    file, selector = split_selector(Path(source).expanduser())
    if file.is_file():  # a big_vision .npz, possibly with a ":img" selector
        if revision is not None:
            raise CheckpointError(f"{file} is a local file: revision={revision!r} does not apply")
        resolved = f"{file.resolve()}:{selector}" if selector else str(file.resolve())
        return Snapshot(Path(resolved), resolved)
    return fetch(source, transformers_files, revision=revision, cache_dir=cache_dir,
                 local_files_only=local_files_only, token=token)
