"""transformers 5's ``tokenizer.json`` of T5 / mT5, read back as the sentencepiece model it came from.

The reference is the original ``spiece.model`` run by sentencepiece: every piece, score and piece
type of the rebuilt model, and the ids of every test text, must equal it. The ``tokenizer.json``
files are written by transformers itself (``T5TokenizerFast`` converting a ``spiece.model``).
"""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import sentencepiece as spm
from pali.testing.spm import CORPUS, train_spm

from pali import PaliProcessor
from pali.errors import CheckpointError
from pali.processing.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [*CORPUS, "  two  spaces  ", "ﬁ ligature, ＡＢＣ full width, Å", "a <extra_id_0> b <extra_id_7>",
         "characters it never saw: ☃ ∮ ⟁", "", "tab\tand\nnewline"]


@pytest.fixture(scope="module", params=[False, True], ids=["t5-unk", "mt5-byte-fallback"])
def saved(request, tmp_path_factory):
    """(original spiece.model, a folder holding only what transformers 5 saves: tokenizer.json)."""
    root = tmp_path_factory.mktemp("tokjson")
    spiece = train_spm(root / "spm", byte_fallback=request.param, vocab_size=400 if request.param else 156)
    folder = root / "saved"
    transformers.T5TokenizerFast.from_pretrained(str(spiece.parent), extra_ids=100).save_pretrained(str(folder))
    assert (folder / "tokenizer.json").is_file() and not (folder / "spiece.model").exists()
    return spiece, folder


def test_the_rebuilt_model_is_the_original(saved):
    spiece, folder = saved
    original, rebuilt = spm.SentencePieceProcessor(model_file=str(spiece)), Tokenizer.from_pretrained(folder).sp
    assert rebuilt.get_piece_size() == original.get_piece_size()
    for i in range(original.get_piece_size()):
        assert rebuilt.id_to_piece(i) == original.id_to_piece(i), i
        assert rebuilt.get_score(i) == pytest.approx(original.get_score(i), abs=1e-6), i
        assert (rebuilt.is_control(i), rebuilt.is_unknown(i), rebuilt.is_byte(i)) == (
            original.is_control(i), original.is_unknown(i), original.is_byte(i)), i


def test_ids_and_text_match_the_spiece_model(saved):
    spiece, folder = saved
    ours, reference = Tokenizer.from_pretrained(folder), Tokenizer(spiece)
    assert (ours.vocab_size, ours.extra_ids, ours.pad_id, ours.eos_id, ours.unk_id) == (
        reference.vocab_size, 100, reference.pad_id, reference.eos_id, reference.unk_id)
    for text in TEXTS:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text)), text


def test_a_processor_from_a_transformers_5_folder_saves_a_spiece_model(saved, tmp_path):
    """Read from tokenizer.json, saved as our spiece.model: the reload gives the same ids."""
    spiece, folder = saved
    processor = PaliProcessor(Tokenizer.from_pretrained(folder))
    processor.save_pretrained(tmp_path / "ours")
    again = PaliProcessor.from_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "spiece.model").is_file()
    for text in TEXTS:
        assert again.tokenizer.encode(text) == Tokenizer(spiece).encode(text)


def test_spiece_model_wins_where_both_are_present(saved, tmp_path):
    spiece, folder = saved
    both = shutil.copytree(folder, tmp_path / "both")
    (both / "tokenizer.json").write_text("{}")  # would be an error if it were read
    shutil.copy(spiece, both / "spiece.model")
    assert Tokenizer.from_pretrained(both).encode(CORPUS[0]) == Tokenizer(spiece).encode(CORPUS[0])


def test_bad_tokenizer_json_files_are_named(saved, tmp_path):
    _, folder = saved
    bad = shutil.copytree(folder, tmp_path / "bad")
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer.json: not a readable tokenizer.json"):
        Tokenizer.from_pretrained(bad)
    data = json.loads((folder / "tokenizer.json").read_text())
    (bad / "tokenizer.json").write_text(json.dumps({**data, "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    with pytest.raises(CheckpointError, match="a BPE tokenizer.json is not a T5 sentencepiece vocabulary"):
        Tokenizer.from_pretrained(bad)
    (bad / "tokenizer.json").write_text(json.dumps({**data, "model": {**data["model"], "unk_id": 10**6}}))
    with pytest.raises(CheckpointError, match="unk_id 1000000 names no piece"):
        Tokenizer.from_pretrained(bad)
    neither = tmp_path / "neither"
    neither.mkdir()
    with pytest.raises(CheckpointError, match="no tokenizer: neither spiece.model nor transformers' tokenizer.json"):
        Tokenizer.from_pretrained(neither)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from([("model",), ("model", "type"), ("model", "vocab"), ("model", "unk_id"), ("normalizer",),
                             ("pre_tokenizer",), ("pre_tokenizer", "pretokenizers", 1), ("added_tokens",), ("model", "vocab", 0), ("model", "vocab", -1)]),
       value=JSON_VALUES)
def test_any_field_replaced_loads_or_is_a_checkpoint_error(saved, tmp_path, path, value):
    """A damaged tokenizer.json gives ids or a named CheckpointError, never another exception."""
    data = json.loads((saved[1] / "tokenizer.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    try:
        Tokenizer.from_pretrained(tmp_path).encode(CORPUS[0])
    except CheckpointError:
        pass


def test_a_corrupt_spiece_model_is_its_error_not_a_fall_back(saved, tmp_path):
    _, folder = saved
    both = shutil.copytree(folder, tmp_path / "both")
    (both / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="spiece.model: not a sentencepiece model"):
        Tokenizer.from_pretrained(both)
