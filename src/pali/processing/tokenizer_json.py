"""A T5 / mT5 ``tokenizer.json`` (the `tokenizers` file) back into the sentencepiece model it came from.

transformers 5 saves T5's tokenizer as ``tokenizer.json`` alone: a folder written by its
``save_pretrained`` holds no ``spiece.model``. That file is transformers' conversion of the
sentencepiece model, and it keeps everything sentencepiece needs: the Unigram pieces and their
scores in id order, the ``<unk>`` id, and the normaliser's precompiled character map (NFKC plus
T5's rules). Rebuilding the model proto from them lets the one `pali.processing.tokenizer.Tokenizer` run it,
with ids identical to the original ``spiece.model`` (checked in tests/test_tokenizer_json.py).

Two things the conversion lost are restored from what it kept: the ``<extra_id_N>`` sentinels that
transformers appends to the vocabulary are dropped and counted (the tokenizer adds them back in the
same place), and byte fallback is on when all 256 ``<0xNN>`` byte pieces are present (sentencepiece
only has them when the model was trained with it, as mT5's was; transformers writes
``byte_fallback: false`` regardless). Only Unigram models exist in the T5 family; any other kind of
``tokenizer.json`` is refused by name.

The proto is written by hand (a handful of fields of ``sentencepiece_model.proto``), so reading
such a folder needs neither protobuf nor transformers.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
import re
import struct
from typing import Any

from ..errors import CheckpointError

SENTINEL_PIECE = re.compile(r"<extra_id_(\d+)>\Z")
BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>\Z")
# sentencepiece_model.proto: SentencePiece.Type, TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
UNIGRAM = 1


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 fields are ten bytes of two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | float | bytes | str) -> bytes:
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, (bytes, str)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        return _varint(number << 3 | 2) + _varint(len(data)) + data
    return _varint(number << 3) + _varint(int(value))


def read(path: str | Path) -> tuple[bytes, int]:
    """``(sentencepiece model proto, number of <extra_id_N> sentinels)`` from a ``tokenizer.json``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable tokenizer.json ({e})") from None
    try:
        return to_spiece(data)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def to_spiece(data: Any) -> tuple[bytes, int]:
    """The sentencepiece model proto of a parsed T5-family ``tokenizer.json``, and its sentinel count."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "Unigram":
        kind = model.get("type") if isinstance(model, dict) else None
        raise CheckpointError(f"a {kind or 'model-less'} tokenizer.json is not a T5 sentencepiece vocabulary (Unigram)")
    vocab = model.get("vocab")
    if not isinstance(vocab, list) or not all(
        isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) and isinstance(row[1], (int, float))
        for row in vocab
    ):
        raise CheckpointError("model.vocab is not a list of [piece, score] pairs")
    pieces = [row[0] for row in vocab]
    sentinels = 0  # transformers appends <extra_id_99> ... <extra_id_0>: count them from the end
    while sentinels < len(pieces) and (m := SENTINEL_PIECE.match(pieces[-1 - sentinels])) and int(m[1]) == sentinels:
        sentinels += 1
    pieces = pieces[: len(pieces) - sentinels]
    unk = model.get("unk_id")
    if not isinstance(unk, int) or not 0 <= unk < len(pieces):
        raise CheckpointError(f"model.unk_id {unk!r} names no piece")
    added = data.get("added_tokens")
    special = {t.get("content") for t in added if isinstance(t, dict) and t.get("special")} if isinstance(added, list) else set()
    for name in ("<pad>", "</s>"):
        if name not in pieces:
            raise CheckpointError(f"no {name} piece: T5 vocabularies have <pad> = 0 and </s> = 1")
    byte_fallback = sum(bool(BYTE_PIECE.match(p)) for p in pieces) == 256

    def kind(i: int, piece: str) -> int:
        if i == unk:
            return UNKNOWN
        if byte_fallback and BYTE_PIECE.match(piece):
            return BYTE
        return CONTROL if piece in special or piece in ("<pad>", "</s>") else NORMAL

    try:
        proto = b"".join(
            _field(1, _field(1, piece) + _field(2, float(vocab[i][1])) + _field(3, kind(i, piece)))
            for i, piece in enumerate(pieces)
        )
    except (OverflowError, UnicodeEncodeError) as e:  # a score beyond float32, a lone surrogate in a piece
        raise CheckpointError(f"model.vocab holds a piece sentencepiece cannot store ({e})") from None
    trainer = (
        _field(3, UNIGRAM) + _field(4, len(pieces)) + _field(35, int(byte_fallback))
        + _field(40, unk) + _field(41, -1) + _field(42, pieces.index("</s>")) + _field(43, pieces.index("<pad>"))
    )
    proto += _field(2, trainer) + _field(3, _normalizer(data.get("normalizer"), data.get("pre_tokenizer")))
    return proto, sentinels


def _steps(node: Any, key: str) -> list[Any]:
    """The steps of a ``tokenizers`` component: a ``Sequence``'s list under ``key``, or the one step."""
    if isinstance(node, dict) and node.get("type") == "Sequence":
        return node.get(key) if isinstance(node.get(key), list) else []
    return [node] if node else []


def _of_type(steps: list[Any], kind: str) -> list[dict]:
    return [s for s in steps if isinstance(s, dict) and s.get("type") == kind]


def _normalizer(normalizer: Any, pre_tokenizer: Any) -> bytes:
    """sentencepiece's NormalizerSpec from transformers' normaliser and pre-tokeniser of T5.

    The precompiled character map is sentencepiece's own (``nmt_nfkc``); the Metaspace pre-tokeniser
    with ``prepend_scheme`` ``always`` is its dummy prefix, and whitespace splitting (or a Replace
    normaliser) its removal of extra whitespace.
    """
    steps, pre = _steps(normalizer, "normalizers"), _steps(pre_tokenizer, "pretokenizers")
    charsmap = next((s.get("precompiled_charsmap") for s in _of_type(steps, "Precompiled")), None)
    metaspace = next(iter(_of_type(pre, "Metaspace")), None)
    if metaspace is None:
        raise CheckpointError("no Metaspace pre-tokenizer: not a sentencepiece vocabulary")
    dummy_prefix = metaspace.get("prepend_scheme", "always") != "never" and bool(metaspace.get("add_prefix_space", True))
    split_spaces = bool(_of_type(pre, "WhitespaceSplit") or _of_type(steps, "Replace"))
    spec = _field(1, "nmt_nfkc" if charsmap else "identity")
    if charsmap:
        try:
            spec += _field(2, base64.b64decode(charsmap, validate=True))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"normalizer's precompiled_charsmap is not base64 ({e})") from None
    return spec + _field(3, int(dummy_prefix)) + _field(4, int(split_spaces)) + _field(5, 1)
