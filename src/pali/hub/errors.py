"""The Hub's own error: a checkpoint that cannot be fetched (as opposed to one that is wrong)."""

from ..errors import CheckpointError, MissingFileError


class HubError(CheckpointError):
    """A repo, revision or file that does not exist or cannot be reached, or a missing token.

    A [`pali.CheckpointError`][] (and so a ``ValueError``), so one ``except`` covers "could
    not get the weights" whether they were on the Hub or on disk.
    """


class HubMissingFileError(HubError, MissingFileError):
    """A Hub repo that exists but holds no file of that name."""
