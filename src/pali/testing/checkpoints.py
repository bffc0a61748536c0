"""Test helpers over pali's checkpoint code (not a test module): whole state dicts in memory.

The library never holds a whole checkpoint at once (it reads one tensor at a time); tests and
benchmarks compare whole state dicts, so these conveniences live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch

from pali.io import list_tensors
from pali.convert.keymap import KeyMap
from pali.convert.plan import Source, map_sources


def read_safetensors(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of a checkpoint folder, through the library's reader."""
    entries, _ = list_tensors(folder)
    for name, entry in entries.items():
        yield name, entry.load()


def apply_keymap(keymap: KeyMap, tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """A foreign state dict's tensors renamed and reshaped by ``keymap`` (the converters' own planner)."""
    sources = [Source(name, tuple(t.shape), lambda t=t: t) for name, t in tensors]
    for item in map_sources(sources, keymap):
        yield item.target, item.load()


def convert_state_dict(keymap: KeyMap, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(apply_keymap(keymap, state_dict.items()))
