"""Pairing predictions with references by id: nothing dropped silently, nothing scored twice."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import DuplicateIdsError, EvalInputError, MissingPredictionsError, UnknownIdsError, show_ids

V = TypeVar("V")


@dataclass(frozen=True)
class Coverage:
    """How many of the reference ids were scored; ``missing`` lists the rest (``allow_partial``)."""

    scored: int
    total: int
    missing: tuple[Any, ...] = field(default=())

    @property
    def partial(self) -> bool:
        return self.scored < self.total


def unique(pairs: Iterable[tuple[Hashable, V]], what: str) -> dict[Hashable, V]:
    """``{id: value}`` from ``(id, value)`` pairs; two pairs with one id are an error, not a last-wins."""
    out: dict[Hashable, V] = {}
    duplicates = set()
    for key, value in pairs:
        if key in out:
            duplicates.add(key)
        out[key] = value
    if duplicates:
        raise DuplicateIdsError(f"{what}: {show_ids(duplicates)} appear more than once")
    return out


def align(predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any], *, allow_partial: bool = False,
          what: str = "predictions") -> tuple[list[Hashable], Coverage]:
    """The ids to score (in the references' order) and the coverage.

    Predictions for ids the references lack are always an error (a wrong file, or ids of another
    type: ``"42"`` is not ``42``); references without a prediction are one unless ``allow_partial``.
    """
    unknown = [k for k in predictions if k not in references]
    if unknown:
        hint = ""
        if any(str(k) in {str(r) for r in references} for k in unknown[:50]):
            hint = " (the same ids exist as another type: string vs number)"
        raise UnknownIdsError(f"{what}: {show_ids(unknown)} are not in the references{hint}")
    ids = [k for k in references if k in predictions]
    missing = tuple(k for k in references if k not in predictions)
    if missing and not allow_partial:
        raise MissingPredictionsError(
            f"{what}: {show_ids(missing)} of {len(references)} have no prediction; "
            "pass allow_partial=True (--allow-partial) to score the others")
    if not ids:
        raise EvalInputError(f"{what}: nothing to score (no prediction matches a reference id)")
    return ids, Coverage(scored=len(ids), total=len(references), missing=missing)
