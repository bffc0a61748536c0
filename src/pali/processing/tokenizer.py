"""mT5's sentencepiece vocabulary plus 100 ``<extra_id_N>`` sentinels, as PaLI's text towers read it.

Ids are sentencepiece's own (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 in mT5's model) followed by
the sentinels, counted down from the end of the vocabulary: ``<extra_id_N>`` =
``sp_size + extra_ids - 1 - N`` (so ``<extra_id_0>`` is the last id), exactly as transformers'
``T5Tokenizer`` and seqio's ``SentencePieceVocabulary`` lay them out. ``encode`` appends ``</s>``.

User text is taken literally: a ``</s>``, ``<pad>`` or ``<unk>`` typed into a question is spelled
with ordinary pieces and can never end or pad a prompt early (``T5Tokenizer`` would turn it into
the control id). The one exception is ``<extra_id_N>``, which PaLI prompts legitimately contain
(``"Answer in en: {question} <extra_id_0>"``): it becomes the sentinel id, as in ``T5Tokenizer``.

Characters missing from the vocabulary follow sentencepiece: ``<unk>``, or byte pieces when the
model was trained with byte fallback (mT5's was). ``T5Tokenizer`` (a ``tokenizers`` Unigram model
in transformers 5) ignores byte fallback and yields ``<unk>`` there; everything else matches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import operator
from pathlib import Path
import re

import sentencepiece as spm
import torch

from . import tokenizer_json
from .. import bundled
from ..errors import CheckpointError, InputError, MissingFileError

SPIECE_NAME = "spiece.model"
TOKENIZER_JSON_NAME = "tokenizer.json"
SENTINEL = re.compile(r"<extra_id_(\d+)>")
PADDING = (False, "longest", "max_length")
#: Past this no embedding table reaches (transformers' tokenizers keep ids in 32 bits): an id this
#: large is a mistake, not a padding row.
MAX_TOKEN_ID = 2**31


def download_from_hub(repo_id: str, filename: str, *, revision: str | None = None) -> Path:
    """Fetch one file of a Hugging Face Hub repo into the local cache (the only network access)."""
    from ..hub.download import fetch_file

    return fetch_file(repo_id, filename, revision=revision)


def resolve_file(source: str | Path, filename: str, *, revision: str | None = None) -> Path:
    """``filename`` inside a local directory, a local file itself, or ``filename`` of a Hub repo id.

    A string that names no local file or directory and looks like ``owner/name`` (or ``name``) is
    taken as a repo id; anything else that does not exist is an error naming the path.
    """
    source = bundled.resolve(source)
    path = Path(source).expanduser()
    if path.is_dir():
        found = path / filename
        if not found.is_file():
            raise MissingFileError(f"{path}: no {filename} in this directory")
        return found
    if path.is_file():
        return path
    from ..hub.download import as_repo_id

    return download_from_hub(as_repo_id(source), filename, revision=revision)


def load(resolve: Callable[[str], Path], *, extra_ids: int | None = None) -> Tokenizer:
    """The text tokenizer of a checkpoint: its ``spiece.model``, else its ``tokenizer.json``.

    ``resolve`` maps a file name to a local path (`MissingFileError` when the checkpoint has no
    such file). transformers 5 writes T5's tokenizer as ``tokenizer.json`` only. Only an absent
    ``spiece.model`` leads to the other file: a corrupt one, or an unreachable Hub, is that error.
    """
    try:
        return from_file(resolve(SPIECE_NAME), extra_ids=extra_ids)
    except MissingFileError as first:
        try:
            path = resolve(TOKENIZER_JSON_NAME)
        except MissingFileError:
            raise MissingFileError(
                f"no tokenizer: neither {SPIECE_NAME} nor transformers' {TOKENIZER_JSON_NAME} ({first})"
            ) from None
    return from_file(path, extra_ids=extra_ids)


def from_file(path: Path, *, extra_ids: int | None = None) -> Tokenizer:
    """A ``spiece.model``, or a ``tokenizer.json`` (by its suffix), whose sentencepiece model
    `pali.processing.tokenizer_json` rebuilds with the sentinels it counted (unless ``extra_ids`` is given)."""
    if path.suffix != ".json":
        return Tokenizer(path, extra_ids=100 if extra_ids is None else extra_ids)
    proto, sentinels = tokenizer_json.read(path)
    return Tokenizer(proto, extra_ids=sentinels if extra_ids is None else extra_ids, source=str(path))


class Tokenizer:
    """Text <-> ids for mT5 (see the module docstring for the id layout and the special-text rule)."""

    def __init__(self, model_file: str | Path | bytes, *, extra_ids: int = 100, source: str | None = None) -> None:
        """``model_file``: a ``spiece.model`` path, or the model's serialized proto (``source`` names
        where it came from in errors)."""
        self.model_file = None if isinstance(model_file, bytes) else Path(model_file)
        self.source = source or str(self.model_file)
        if extra_ids < 0:
            raise InputError(f"extra_ids must be >= 0, got {extra_ids}")
        self.sp = spm.SentencePieceProcessor()
        try:
            if self.model_file is None:
                self.sp.load_from_serialized_proto(model_file)
            else:
                self.sp.load(str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{self.source}: not a sentencepiece model ({e})") from None
        self.extra_ids = extra_ids
        self.pad_id, self.eos_id, self.unk_id = self.sp.pad_id(), self.sp.eos_id(), self.sp.unk_id()
        if self.pad_id < 0 or self.eos_id < 0:
            raise CheckpointError(
                f"{self.source}: the model defines no <pad> or </s> piece (pad_id={self.pad_id}, "
                f"eos_id={self.eos_id}); mT5 vocabularies have pad=0, eos=1"
            )

    @classmethod
    def from_pretrained(
        cls, source: str | Path, *, revision: str | None = None, extra_ids: int | None = None
    ) -> Tokenizer:
        """From a ``spiece.model`` file, a directory holding one, or a Hub repo id (``google/mt5-small``);
        where there is no ``spiece.model``, from transformers 5's ``tokenizer.json`` (see `load`)."""
        path = Path(bundled.resolve(source)).expanduser()
        if path.is_file():
            return from_file(path, extra_ids=extra_ids)
        return load(lambda name: resolve_file(source, name, revision=revision), extra_ids=extra_ids)

    def save(self, path: str | Path) -> None:
        """Write the sentencepiece model (bytes as loaded) to ``path``."""
        Path(path).write_bytes(self.sp.serialized_model_proto())

    # -- vocabulary ----------------------------------------------------------------------------

    @property
    def sp_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """Sentencepiece pieces plus sentinels: the smallest embedding table that covers every id."""
        return self.sp_size + self.extra_ids

    def sentinel_id(self, n: int) -> int:
        """Id of ``<extra_id_n>``."""
        if not 0 <= n < self.extra_ids:
            raise InputError(f"<extra_id_{n}> does not exist: this tokenizer has {self.extra_ids} sentinels")
        return self.vocab_size - 1 - n

    def _sentinel_index(self, token_id: int) -> int | None:
        return self.vocab_size - 1 - token_id if token_id >= self.sp_size else None

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, *, add_eos: bool = True, max_length: int | None = None) -> list[int]:
        """Ids of ``text`` (``</s>`` appended); ``max_length`` truncates the text, keeping the eos."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: sentencepiece would fail obscurely
            raise InputError(f"text is not valid Unicode: {e.reason} at position {e.start}") from None
        ids: list[int] = []
        start = 0
        for match in SENTINEL.finditer(text):
            ids += self.sp.encode(text[start : match.start()])
            ids.append(self.sentinel_id(int(match.group(1))))
            start = match.end()
        ids += self.sp.encode(text[start:])
        if max_length is not None:
            if max_length < int(add_eos):
                raise InputError(f"max_length {max_length} leaves no room for the eos token")
            ids = ids[: max_length - int(add_eos)]
        return ids + [self.eos_id] if add_eos else ids

    def __call__(
        self,
        text: str | Sequence[str],
        *,
        padding: bool | str = "longest",
        max_length: int | None = None,
        truncation: bool = True,
        add_eos: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Batch-encode into right-padded ``input_ids`` and ``attention_mask`` (``[B, T]`` int64).

        ``padding``: ``"longest"`` (or True) pads to the longest row, ``"max_length"`` to
        ``max_length``, False requires equal lengths. With ``max_length``, longer rows are cut
        (keeping their eos) unless ``truncation=False``, which makes them an error instead.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("no text to encode")
        limit = max_length if truncation else None
        rows = [self.encode(t, add_eos=add_eos, max_length=limit) for t in texts]
        if max_length is not None and not truncation:
            for i, row in enumerate(rows):
                if len(row) > max_length:
                    raise InputError(
                        f"text {i} has {len(row)} tokens > max_length {max_length} and truncation=False"
                    )
        ids, mask = pad_rows(rows, self.pad_id, padding=padding, max_length=max_length)
        return {"input_ids": ids, "attention_mask": mask}

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, ids: Iterable[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of one row: stops at the first ``</s>`` and drops ``<pad>``; sentinels are dropped
        too unless ``skip_special_tokens=False``, which writes them as ``<extra_id_N>``.

        Ids at or past ``vocab_size`` decode to nothing, as transformers decodes them: a model's
        embedding table may be padded past its tokenizer (Flan-T5: 32128 rows, 32100 pieces), and
        the ids of its padding rows have no text. A negative id, or one no table could hold, is an error."""
        ids = _id_list(ids)
        parts: list[str] = []
        run: list[int] = []
        for token in ids:
            if not 0 <= token < MAX_TOKEN_ID:
                raise InputError(f"token id {token} is outside the vocabulary [0, {self.vocab_size}) and any model's")
            if token >= self.vocab_size:
                continue
            if token == self.eos_id:
                break
            if token == self.pad_id:
                continue
            sentinel = self._sentinel_index(token)
            if sentinel is None:
                run.append(token)
            elif not skip_special_tokens:
                parts += [self.sp.decode(run), f"<extra_id_{sentinel}>"]
                run = []
        parts.append(self.sp.decode(run))
        return " ".join(p for p in parts if p)

    def batch_decode(
        self, ids: torch.Tensor | Sequence[Sequence[int]], *, skip_special_tokens: bool = True
    ) -> list[str]:
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]


def _id_list(ids: Iterable[int] | torch.Tensor) -> list[int]:
    """One row of token ids as ints; anything else (floats, strings, a 2-D tensor) is an InputError."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            raise InputError(f"ids must be a 1-D integer tensor, got {ids.dtype} {list(ids.shape)}")
        return ids.tolist()
    try:
        if isinstance(ids, (str, bytes)):
            raise TypeError
        return [operator.index(v) for v in ids]  # ints, numpy and 0-d torch integers
    except TypeError:
        raise InputError(f"ids must be a sequence of ints, got {str(ids)[:80]}") from None


def pad_rows(
    rows: Sequence[Sequence[int]],
    pad_value: int,
    *,
    padding: bool | str = "longest",
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id rows into ``[B, T]`` int64 ``(ids, mask)``; see
    [`Tokenizer.__call__`][pali.processing.tokenizer.Tokenizer.__call__]."""
    if padding is True:
        padding = "longest"
    if padding not in PADDING:
        raise InputError(f"padding must be one of {PADDING}, got {padding!r}")
    longest = max(len(r) for r in rows)
    if padding == "max_length":
        if max_length is None:
            raise InputError("padding='max_length' needs max_length")
        length = max_length
    elif padding is False:
        if any(len(r) != longest for r in rows):
            raise InputError(f"rows have different lengths {[len(r) for r in rows]} and padding=False")
        length = longest
    else:
        length = longest
    ids = torch.full((len(rows), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
