"""InstructBLIP's Q-Former vocabulary: BERT's WordPiece, read and run by the `tokenizers` library.

InstructBLIP gives the instruction to its Q-Former too (BERT-base, uncased WordPiece), so its
processor makes a second row of ids per prompt, ``[CLS] ... [SEP]``. A transformers checkpoint
holds that tokenizer under ``qformer_tokenizer/``, as ``tokenizer.json`` (the `tokenizers` file
itself, normaliser and all) or only ``vocab.txt`` (built here as BERT's WordPiece with
``do_lower_case`` from ``tokenizer_config.json``). We save it as one ``tokenizer.json``-format
file, so a reload needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _Tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

from ..errors import CheckpointError, InputError

PAD = "[PAD]"


class WordPieceTokenizer:
    """Text -> Q-Former ids with BERT's special tokens (``[CLS]`` first, ``[SEP]`` last)."""

    def __init__(self, backend: _Tokenizers | BertWordPieceTokenizer) -> None:
        self.backend = backend
        backend.no_padding()
        backend.no_truncation()  # the processor cuts, and warns when it does
        pad = backend.token_to_id(PAD)
        self.pad_id = 0 if pad is None else pad

    @classmethod
    def from_file(cls, path: str | Path) -> WordPieceTokenizer:
        """From a `tokenizers` ``tokenizer.json``."""
        try:
            return cls(_Tokenizers.from_file(str(path)))
        except Exception as e:  # tokenizers raises its own Exception for unreadable JSON
            raise CheckpointError(f"{path}: not a tokenizers tokenizer.json ({e})") from None

    @classmethod
    def from_vocab(cls, path: str | Path, *, lowercase: bool = True) -> WordPieceTokenizer:
        """BERT's WordPiece over a ``vocab.txt`` (one token a line)."""
        try:
            return cls(BertWordPieceTokenizer(str(path), lowercase=lowercase))
        except Exception as e:
            raise CheckpointError(f"{path}: not a WordPiece vocab.txt ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        return self.backend.encode(text).ids

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))
