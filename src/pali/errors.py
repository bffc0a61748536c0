"""One exception family for everything a user can get wrong.

Each subclass also derives from the builtin a caller would naturally catch (``ValueError`` for
bad values, ``KeyError`` for unknown names), so ``except ValueError`` keeps working while
``except PaliError`` catches them all.
"""


class PaliError(Exception):
    """Base of every error pali raises for bad input, configs or checkpoints."""


class ConfigError(PaliError, ValueError):
    """A config that cannot describe a model: unknown fields, bad values, unknown kinds."""


class InputError(PaliError, ValueError):
    """Model or processor input of the wrong shape, dtype, size or content."""


class CheckpointError(PaliError, ValueError):
    """A checkpoint file that is missing, corrupt, or does not match the model."""


class MissingFileError(CheckpointError):
    """A checkpoint (folder or Hub repo) that holds no file of the name asked for, so a caller may
    look for another one (``spiece.model``, then ``tokenizer.json``) rather than give up."""


class RegistryError(PaliError, KeyError):
    """An unknown name (preset, encoder, head), or two registrations under one name."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])
