"""Tokenizer: ids identical to transformers' T5Tokenizer on the same sentencepiece model."""

from __future__ import annotations

import pytest
import torch
from pali.testing.spm import train_spm

from pali.errors import CheckpointError, InputError
from pali.processing.tokenizer import Tokenizer, resolve_file

transformers = pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")  # T5Tokenizer needs it to read spiece.model

TEXTS = [
    "Hello world, a cat on the sofa.",
    "一只猫坐在红色的沙发上",
    "قطة تجلس على أريكة حمراء",
    "एक बिल्ली लाल सोफे पर",
    "кошка сидит на диване",
    "cats 🐱 and dogs 🐶 😀",
    "unknown: Ωμέγα ☃ ж ｆｕｌｌ ①",  # Greek, snowman: not in the vocabulary; fullwidth: NFKC
    "Answer in en: what colour is the car? <extra_id_0>",
    "a <extra_id_5> b <extra_id_0>",
    "a<extra_id_1>b",
    "<extra_id_99>",
    "  spaces   everywhere  ",
    "",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(ours, T5Tokenizer) for a plain model and for a byte-fallback model."""
    out = {}
    for byte_fallback, size in ((False, 200), (True, 460)):
        folder = tmp_path_factory.mktemp(f"spm_bf{int(byte_fallback)}")
        train_spm(folder, vocab_size=size, byte_fallback=byte_fallback)
        reference = transformers.T5Tokenizer.from_pretrained(str(folder), extra_ids=100)
        out[byte_fallback] = (Tokenizer.from_pretrained(folder), reference)
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_t5tokenizer(models, text):
    ours, reference = models[False]
    assert len(reference) == ours.vocab_size
    assert ours.encode(text) == reference(text)["input_ids"]


def test_decode_matches_t5tokenizer(models):
    """Same text, except that <unk> shows as sentencepiece's " ⁇ " where T5Tokenizer drops it."""
    ours, reference = models[False]
    for text in TEXTS:
        ids = reference(text)["input_ids"]
        known = [i for i in ids if i != ours.unk_id]
        assert ours.decode(known) == reference.decode(ids, skip_special_tokens=True)
    assert "\u2047" in ours.decode(ours.encode("Ωμέγα"))


def test_byte_fallback_spells_unknowns_where_t5tokenizer_says_unk(models):
    """mT5 was trained with byte fallback; T5Tokenizer's Unigram ignores it (one fused <unk>)."""
    ours, reference = models[True]
    byte_ids = {ours.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    differs = 0
    for text in TEXTS:
        ids = ours.encode(text)
        fused: list[int] = []
        for token in ids:
            if token in byte_ids:
                if fused[-1:] != [ours.unk_id]:
                    fused.append(ours.unk_id)
            else:
                fused.append(token)
        assert fused == reference(text)["input_ids"], text
        differs += fused != ids
        if "<extra_id" not in text:  # lossless up to NFKC and whitespace cleanup
            assert ours.decode(ids) == ours.sp.normalize(text).replace("\u2581", " ").strip()
    assert differs >= 2  # the emoji and the Greek text really took the byte path


def test_unknown_characters_without_byte_fallback_are_unk(models):
    ours, _ = models[False]
    assert ours.unk_id in ours.encode("Ωμέγα")


def test_sentinel_ids_count_down_from_the_end(models):
    ours, reference = models[False]
    assert ours.sentinel_id(0) == ours.vocab_size - 1 == ours.sp_size + 99
    assert ours.sentinel_id(99) == ours.sp_size
    for n in range(100):
        assert ours.sentinel_id(n) == reference.convert_tokens_to_ids(f"<extra_id_{n}>")
    assert ours.decode([5, ours.sentinel_id(3), 1], skip_special_tokens=False).endswith("<extra_id_3>")
    assert "<extra_id" not in ours.decode([5, ours.sentinel_id(3), 1])


def test_control_tokens_in_user_text_stay_literal(models):
    """T5Tokenizer turns a typed '</s>' into eos; ours spells it, so a prompt cannot end early."""
    _, reference = models[False]
    text = "x</s> <pad> <unk>y"
    theirs = reference(text)["input_ids"]
    assert {0, 1, 2} <= set(theirs[:-1])
    for tokenizer, _ in models.values():
        mine = tokenizer.encode(text)
        assert mine[-1] == tokenizer.eos_id
        assert tokenizer.eos_id not in mine[:-1] and tokenizer.pad_id not in mine
    assert tokenizer.decode(mine) == text  # the byte-fallback model spells '<', '/', '>' exactly


def test_batch_padding_truncation_and_masks(models):
    ours, _ = models[False]
    texts = ["a cat", "a photo of a red car on the road"]
    batch = ours(texts)
    lengths = [len(ours.encode(t)) for t in texts]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0]:].eq(ours.pad_id).all()
    fixed = ours(texts, padding="max_length", max_length=40)
    assert fixed["input_ids"].shape == (2, 40)
    cut = ours(texts, max_length=4)
    assert cut["input_ids"].shape == (2, 4)
    assert cut["input_ids"][1].tolist() == ours.encode(texts[1])[:3] + [ours.eos_id]
    assert ours(texts, add_eos=False)["attention_mask"].sum(1).tolist() == [n - 1 for n in lengths]
    assert torch.equal(ours("a cat")["input_ids"][0], torch.tensor(ours.encode("a cat")))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t.encode("x <extra_id_100>"), "extra_id_100"),
        (lambda t: t.encode(b"bytes"), "str"),
        (lambda t: t([]), "no text"),
        (lambda t: t(["a", "b c d"], padding="sideways"), "padding"),
        (lambda t: t(["a", "b c d"], padding=False), "different lengths"),
        (lambda t: t(["a"], padding="max_length"), "max_length"),
        (lambda t: t(["a photo of a cat"], max_length=2, truncation=False), "truncation=False"),
        (lambda t: t.encode("a", max_length=0), "eos"),
        (lambda t: t.decode([-1]), "outside the vocabulary"),
        (lambda t: t.sentinel_id(-1), "extra_id_-1"),
    ],
)
def test_bad_input_raises(models, call, match):
    with pytest.raises(InputError, match=match):
        call(models[False][0])


def test_bad_model_files(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a sentencepiece model"):
        Tokenizer.from_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no spiece.model"):
        Tokenizer.from_pretrained(empty)
    with pytest.raises(CheckpointError, match="no such file"):
        Tokenizer.from_pretrained(str(tmp_path / "missing" / "dir"))


def test_save_round_trip(models, tmp_path):
    ours, _ = models[False]
    ours.save(tmp_path / "spiece.model")
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.encode(TEXTS[0]) == ours.encode(TEXTS[0]) and again.vocab_size == ours.vocab_size


def test_hub_repo_ids_go_through_hf_hub_download(models, monkeypatch):
    import huggingface_hub

    calls = []
    local = models[False][0].model_file

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("pali.hub.download.list_files", lambda repo_id, revision, token: ["spiece.model"])
    tok = Tokenizer.from_pretrained("google/mt5-small", revision="main")
    assert calls == [("google/mt5-small", "spiece.model", "main")]
    assert tok.vocab_size == models[False][0].vocab_size


def test_hub_errors_name_repo_and_file(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, filename, revision=None):
        raise LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr("pali.hub.download.list_files", lambda repo_id, revision, token: ["spiece.model"])
    with pytest.raises(CheckpointError, match="'spiece.model' from Hub repo 'someone/nothing'"):
        resolve_file("someone/nothing", "spiece.model")
