"""Task prompts, head parsers (malformed generations included), zero-shot ranking, and all five
heads end to end on a tiny random PaLI with a tokenizer trained in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pali.testing.spm import train_spm
from torch import nn

import pali
from pali import PaliModel, PaliProcessor, ProcessorConfig, Tokenizer
from pali.errors import InputError, RegistryError
from pali.tasks.heads import (
    Answer,
    Caption,
    Classification,
    ClassifyHead,
    DetectHead,
    Detection,
    OcrText,
    TextLocationCodec,
    TokenLocationCodec,
    get_head,
)
from pali.processing.prompts import (
    LANGUAGES,
    caption_prompt,
    detect_prompt,
    language,
    ocr_prompt,
    vqa_prompt,
    vqg_prompt,
)

# -- prompts --------------------------------------------------------------------------------------


def test_prompt_templates():
    assert caption_prompt() == "Generate the alt_text in en at 0: <extra_id_0>"
    assert caption_prompt("fr", "un  chat") == "Generate the alt_text in fr at 2: un chat <extra_id_0>"
    assert ocr_prompt("zh") == "Generate the ocr_text in zh: <extra_id_0>"
    assert vqa_prompt("What is this?", "de") == "Answer in de: What is this? <extra_id_0>"
    assert vqg_prompt("blue", "es") == "Generate a question in es for blue: <extra_id_0>"
    assert detect_prompt("cat") == "Detect cat <extra_id_0>"
    assert detect_prompt(["cat", "hot dog"]) == "Detect cat ; hot dog <extra_id_0>"


def test_languages():
    assert len(LANGUAGES) == 101
    assert language("EN") == "en" and language("he") == "iw" and language("French") == "fr"
    with pytest.raises(InputError, match=r"unknown language 'eng'; near matches: en \(English\)"):
        language("eng")
    with pytest.raises(InputError, match=r"'frnch'.*fr \(French\)"):
        caption_prompt("frnch")
    with pytest.raises(InputError, match="none; see pali.processing.prompts.LANGUAGES"):
        language("qqqqqqq")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: vqa_prompt("  "), "question is empty"),
        (lambda: vqa_prompt(None), "question must be a str"),
        (lambda: detect_prompt([]), "at least one label"),
        (lambda: detect_prompt(["cat", 3]), "label must be a str"),
        (lambda: language(5), "language must be a str"),
        (lambda: caption_prompt("en", prefix=7), "prefix must be a str"),
    ],
)
def test_bad_prompt_arguments(call, match):
    with pytest.raises(InputError, match=match):
        call()


# -- parsers --------------------------------------------------------------------------------------


def test_detect_parses_into_original_pixels():
    head = DetectHead()
    out = head.parse("0 0 999 999 cat ; 100 200 550 999 hot dog", image_size=(480, 640))
    assert out == [
        Detection((0.0, 0.0, 640.0, 480.0), "cat"),
        Detection(pytest.approx((200 / 999 * 640, 100 / 999 * 480, 640.0, 550 / 999 * 480)), "hot dog"),
    ]
    # Separators are optional: the next coordinate group ends a label.
    assert [d.label for d in head.parse("1 2 3 4 cat 5 6 7 8 dog")] == ["cat", "dog"]


@pytest.mark.parametrize(
    "text, labels",
    [
        ("", []),
        ("a cat on a sofa", []),
        ("12 34 56", []),  # cut short
        ("12 34 56 78", []),  # no label
        ("12 34 56 78 ;", []),
        ("1000 0 999 999 cat", []),  # out of range
        ("500 0 100 999 cat", []),  # ymin > ymax
        ("0 500 999 100 cat", []),  # xmin > xmax
        ("1.5 2 3 4 cat", []),  # not integers
        ("12 cat ; 1 2 3 4 dog ; 9 9 9", ["dog"]),  # garbage around a good group
        ("0 0 999 999 cat ; 5 5 1 1 dog ; 10 10 20 20 bird", ["cat", "bird"]),
        ("1 2 3 4 cat\n", ["cat"]),
    ],
)
def test_detect_malformed_output_yields_no_box(text, labels):
    assert [d.label for d in DetectHead().parse(text, image_size=(10, 10))] == labels


def test_detect_target_round_trip():
    head = DetectHead()
    boxes = [Detection((0.0, 0.0, 640.0, 480.0), "cat"), Detection((64.0, 48.0, 320.0, 240.0), "dog")]
    text = head.target(boxes, (480, 640))
    assert text == "0 0 999 999 cat ; 100 100 500 500 dog"
    for got, want in zip(head.parse(text, (480, 640)), boxes):
        assert got.label == want.label and got.box == pytest.approx(want.box, abs=0.5)


def test_location_token_codec_plugs_in():
    head = DetectHead(TokenLocationCodec())
    text = head.target([Detection((0.0, 0.0, 100.0, 50.0), "cat")], (100, 100))
    assert text == "<loc0000><loc0000><loc0512><loc1023> cat"
    assert head.parse(text + " ; <loc0001><loc0002> dog", (100, 100)) == [
        Detection(pytest.approx((0.0, 0.0, 100.0, 512 / 1023 * 100)), "cat")
    ]
    with pytest.raises(InputError, match="at least 2 bins"):
        TextLocationCodec(bins=1)


def test_text_heads_parse():
    assert get_head("caption").parse("  sits on a sofa ", prefix="a  cat") == Caption("a cat sits on a sofa")
    assert get_head("caption").parse("a dog") == Caption("a dog")
    assert get_head("vqa").parse(" blue ") == Answer("blue")
    assert get_head("ocr").parse("OPEN 24 HOURS") == OcrText("OPEN 24 HOURS")
    assert ClassifyHead().parse(torch.tensor([-3.0, -1.0, -2.0]), ["a", "b", "c"]) == [
        Classification("b", -1.0), Classification("c", -2.0), Classification("a", -3.0)
    ]


def test_unknown_head_lists_known_ones():
    with pytest.raises(RegistryError, match="unknown head 'segment'; known: caption, classify, detect, ocr, vqa"):
        get_head("segment")


# -- with a model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = Tokenizer.from_pretrained(train_spm(tmp_path_factory.mktemp("spm")))
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    assert tokenizer.vocab_size == model.config.text.vocab_size
    processor = PaliProcessor(tokenizer, ProcessorConfig(image_size=model.config.vision.image_size))
    return model, processor


def image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_all_five_heads_end_to_end(setup):
    model, processor = setup
    pipe = pali.pipeline(model, processor, max_new_tokens=8)
    cap = pipe.caption(image(0), lang="fr")
    assert isinstance(cap, Caption) and isinstance(cap.text, str)
    assert pipe.caption(image(0), prefix="a cat").text.startswith("a cat")
    answers = pipe.answer([image(0), image(1)], "what is it?", lang="en")
    assert len(answers) == 2 and all(isinstance(a, Answer) for a in answers)
    assert isinstance(pipe.ocr(image(2), num_beams=2), OcrText)
    boxes = pipe.detect(image(3, 30, 90), ["cat", "dog"])
    assert isinstance(boxes, list) and all(isinstance(b, Detection) for b in boxes)
    for d in boxes:  # whatever an untrained model writes, boxes that parse lie inside the image
        assert 0 <= d.box[0] <= d.box[2] <= 90 and 0 <= d.box[1] <= d.box[3] <= 30
    ranked = pipe.classify(image(4), ["cat", "dog", "bird"])
    assert sorted(c.label for c in ranked) == ["bird", "cat", "dog"]
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    assert all(c.score < 0 for c in ranked)


def test_head_run_matches_manual_generation(setup):
    """A head is prompt -> processor -> generate -> decode -> parse; nothing hidden."""
    model, processor = setup
    prompt = vqa_prompt("what colour?", "en")
    batch = processor(images=image(5), text=prompt)
    expected = processor.decode(model.generate(**batch, max_new_tokens=6)[0]).strip()
    got = get_head("vqa").run(model, processor, image(5), question="what colour?", generate_kwargs={"max_new_tokens": 6})
    assert got == [Answer(expected)]


def rigged(model, processor, preferred: str) -> PaliModel:
    """A copy whose logits are a fixed bias favouring the tokens of ``preferred`` (+ eos)."""
    rig = PaliModel(model.config).eval()
    rig.load_state_dict(model.state_dict())
    head = nn.Linear(model.config.text.d_model, model.config.text.vocab_size, bias=True)
    nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[processor.tokenizer.encode(preferred)] = 4.0
    rig.text.lm_head = head
    return rig


def test_classify_ranks_the_rigged_label_first_with_exact_scores(setup):
    model, processor = setup
    tok = processor.tokenizer
    labels = ["cat", "dog", "bird", "a red car"]
    rig = rigged(model, processor, "dog")
    calls = {"vision": [], "lm_head": []}
    rig.vision.register_forward_hook(lambda m, i, o: calls["vision"].append(i[0].shape[0]))
    rig.text.lm_head.register_forward_hook(lambda m, i, o: calls["lm_head"].append(i[0].shape[0]))
    results = ClassifyHead().run(rig, processor, [image(0), image(1)], labels)
    assert calls == {"vision": [2], "lm_head": [8]}  # one image pass, one decoder pass for 2 x 4
    log_probs = torch.log_softmax(rig.text.lm_head.bias.detach(), dim=0)
    expected = {label: float(log_probs[tok.encode(label)].sum()) for label in labels}
    for ranked in results:
        assert ranked[0].label == "dog"
        for c in ranked:
            assert c.score == pytest.approx(expected[c.label], abs=1e-4)
    normalised = ClassifyHead(length_normalize=True).run(rig, processor, image(0), labels)[0]
    for c in normalised:
        assert c.score == pytest.approx(expected[c.label] / len(tok.encode(c.label)), abs=1e-4)
    chunked = ClassifyHead().score(rig, processor, image(0), labels, batch_size=3)
    torch.testing.assert_close(chunked[0], torch.tensor([expected[label] for label in labels]), atol=1e-4, rtol=0)


def test_classify_template_changes_the_target(setup):
    model, processor = setup
    rig = rigged(model, processor, "a photo of a cat")
    ranked = pali.pipeline(rig, processor).classify(image(0), ["cat", "dog"], template="a photo of a {label}")
    assert ranked[0].label == "cat"


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        ([], {}, "non-empty list"),
        (["cat", ""], {}, "non-empty label"),
        (["cat", "cat"], {}, "duplicate labels"),
        (["cat"], {"batch_size": 0}, "batch_size"),
    ],
)
def test_classify_bad_arguments(setup, labels, kwargs, match):
    model, processor = setup
    with pytest.raises(InputError, match=match):
        ClassifyHead().score(model, processor, image(0), labels, **kwargs)


def test_bad_template_and_mismatched_vocabulary(setup, tmp_path):
    model, _ = setup
    with pytest.raises(InputError, match="must contain"):
        ClassifyHead(template="a photo")
    big = Tokenizer.from_pretrained(train_spm(tmp_path, vocab_size=200))
    processor = PaliProcessor(big, ProcessorConfig(image_size=32))
    with pytest.raises(InputError, match="tokenizer has 300 ids but the model's vocabulary only 256"):
        pali.pipeline(model, processor).caption(image(0))
