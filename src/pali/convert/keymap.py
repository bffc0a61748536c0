"""Rename-and-reshape rules from a foreign checkpoint's tensor names to ours.

A ``KeyMap`` is an ordered list of regex rules. Each maps a source name to a target name
(a ``re`` replacement template) and optionally transforms the tensor (transpose, reshape).
``pali.convert.plan.map_sources`` applies it to a checkpoint's tensors, one at a time, so a
converter can stream a checkpoint larger than memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from typing import Callable

import torch

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
