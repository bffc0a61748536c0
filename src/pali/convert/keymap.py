"""Rename-and-reshape rules from a foreign checkpoint's tensor names to ours.

A :class:`KeyMap` is an ordered list of regex rules. Each maps a source name to a target name
(a ``re`` replacement template) and optionally transforms the tensor (transpose, reshape). Tensors
go through one at a time, so a converter can stream a checkpoint larger than memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import torch

from ..errors import CheckpointError

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str | None  # None: a known source tensor that PaLI does not use (dropped)
    transform: Transform | None = None

    def match(self, name: str) -> re.Match | None:
        return re.fullmatch(self.pattern, name)


@dataclass
class KeyMap:
    """Ordered rules; the first whose pattern matches the whole source name wins."""

    name: str
    rules: list[Rule] = field(default_factory=list)

    def map(self, name: str) -> tuple[str | None, Transform | None]:
        for rule in self.rules:
            m = rule.match(name)
            if m:
                return (None if rule.target is None else m.expand(rule.target)), rule.transform
        raise KeyError(name)

    def convert(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(our_name, tensor)`` for each source tensor; unknown names raise, listed."""
        unknown = []
        for name, tensor in tensors:
            try:
                target, transform = self.map(name)
            except KeyError:
                unknown.append(name)
                continue
            if target is not None:
                yield target, tensor if transform is None else transform(tensor)
        if unknown:
            raise CheckpointError(f"{self.name}: {len(unknown)} unexpected tensors: {sorted(unknown)}")

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(self.convert(state_dict.items()))
