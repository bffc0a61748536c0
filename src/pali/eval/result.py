"""What every scorer returns: the official metrics, per-item scores and how much was scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ids import Coverage


@dataclass
class EvalResult:
    """``metrics``: the numbers under the official scorer's keys (``CIDEr``, ``Bleu_4``...; VQA's
    ``overall``/``perAnswerType``/``perQuestionType``). ``per_item``: ``{id: {metric: score}}``
    for error analysis. ``coverage``: ids scored out of the references'."""

    metrics: dict[str, Any]
    per_item: dict[Any, dict[str, Any]] = field(default_factory=dict)
    coverage: Coverage | None = None

    def to_json(self) -> dict[str, Any]:
        """The metrics, plus ``scored``/``total`` when only part of the references was scored."""
        out = dict(self.metrics)
        if self.coverage is not None and self.coverage.partial:
            out["scored"], out["total"] = self.coverage.scored, self.coverage.total
        return out
