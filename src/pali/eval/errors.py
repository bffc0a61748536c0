"""What can be wrong with the files an evaluation reads, each its own error naming ids or fields.

All derive from ``pali.InputError`` (so from ``ValueError`` too): the ``pali``
command prints them as one line and exits with code 2.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InputError, PaliError


class EvalInputError(InputError):
    """Predictions or references that cannot be scored as given."""


class AnnotationFormatError(EvalInputError):
    """An annotation, reference or prediction file not in the shape its format promises."""


class MissingPredictionsError(EvalInputError):
    """References with no prediction (pass ``allow_partial``/``--allow-partial`` to score the rest)."""


class UnknownIdsError(EvalInputError):
    """Predictions for ids the references do not have."""


class DuplicateIdsError(EvalInputError):
    """Two predictions (or two reference entries) for one id."""


class MissingExtraError(PaliError, ImportError):
    """An optional dependency (or ``java``) the asked-for scorer needs is not installed."""


def show_ids(ids: Iterable[object], limit: int = 5) -> str:
    """``3 ids (1, 2, 7)``-style summary for messages: the count and the first few."""
    ids = sorted(ids, key=lambda i: (str(type(i)), i))
    head = ", ".join(repr(i) for i in ids[:limit]) + (", ..." if len(ids) > limit else "")
    return f"{len(ids)} id{'s' if len(ids) != 1 else ''} ({head})"
