"""PaliProcessor on BLIP-2 / InstructBLIP / mBLIP checkpoints' own processor files, and their prompts.

Checked against transformers: pixels against ``BlipImageProcessor`` on a real photo (matplotlib's
bundled ``grace_hopper.jpg``) cropped to several sizes and aspect ratios, and as RGBA, greyscale
and palette images; token ids against sentencepiece itself and transformers' T5 tokenizer;
Q-Former ids against ``BertTokenizerFast``. Checkpoints come as the Hub holds them (served by the
loopback Hub) and as transformers 5's ``save_pretrained`` writes them (a local folder).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hub_fixtures import hub  # noqa: F401  (fixture)
from PIL import Image
from pali.testing.spm import CORPUS, train_spm

import pali
from pali import PaliProcessor
from pali.cli import main
from pali.errors import CheckpointError, ConfigError, InputError
from pali.tasks.heads import get_head
from pali.processing.processor import shipped_processor

transformers = pytest.importorskip("transformers")
cbook = pytest.importorskip("matplotlib.cbook")

SIZE = 56  # blip2_reference's image size
FAMILIES = {  # prompt set -> (model_type, text model)
    "blip2": ("blip-2", "t5"),
    "mblip": ("blip-2", "mt5"),
    "instructblip": ("instructblip", "t5"),
}
TEXTS = ["a photo of a cat sitting on a red sofa", "Answer in en: what colour is the car?",
         "eine Katze sitzt auf einem roten Sofa", "кошка сидит", "a <image> tag, typed"]


def photo() -> Image.Image:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")  # 512 x 600


def photos() -> dict[str, Image.Image]:
    full = photo()
    return {
        "full 512x600": full,
        "wide 512x200": full.crop((0, 100, 512, 300)),
        "tall 80x600": full.crop((50, 0, 130, 600)),
        "small 100x90 (upscaled)": full.crop((0, 0, 100, 90)),
        "large 1100x1300": full.resize((1100, 1300)),
        "rgba": full.crop((0, 50, 400, 300)).convert("RGBA"),
        "greyscale": full.crop((100, 100, 300, 400)).convert("L"),
        "palette": full.crop((0, 0, 300, 300)).convert("P"),
    }


def hf_config(family: str) -> dict:
    model_type, text = FAMILIES[family]
    return {"model_type": model_type, "num_query_tokens": 4,
            "text_config": {"model_type": text, "tie_word_embeddings": False}}


@functools.cache
def _trained_vocab() -> str:
    from tokenizers.implementations import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(CORPUS, vocab_size=120)
    return "\n".join(sorted(trainer.get_vocab(), key=trainer.get_vocab().get)) + "\n"


def wordpiece_vocab(folder: Path) -> Path:
    """A tiny uncased WordPiece ``vocab.txt`` trained with `tokenizers` (BERT's special tokens),
    the same in every call (training orders equal-count pieces differently from run to run)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(_trained_vocab())
    return folder / "vocab.txt"


def hub_layout(folder: Path, family: str, *, qformer: str = "vocab") -> Path:
    """As the Hub's repos hold it: preprocessor_config.json, spiece.model, tokenizer files with the
    ``<image>`` added token, transformers' processor_config.json, config.json (no weights: the
    processor needs none); InstructBLIP adds ``qformer_tokenizer/`` (``vocab`` or ``json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    spiece = train_spm(folder / "spm", byte_fallback=family == "mblip", vocab_size=400 if family == "mblip" else 156)
    tokenizer = transformers.T5TokenizerFast.from_pretrained(str(spiece.parent), extra_ids=100)
    tokenizer.add_tokens([transformers.AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    tokenizer.save_pretrained(str(folder))
    shutil.move(spiece, folder / "spiece.model")
    shutil.rmtree(folder / "spm")
    transformers.BlipImageProcessor(size={"height": SIZE, "width": SIZE}).to_json_file(folder / "preprocessor_config.json")
    (folder / "processor_config.json").write_text(json.dumps(
        {"num_query_tokens": 4, "processor_class": "InstructBlipProcessor" if family == "instructblip" else "Blip2Processor"}))
    (folder / "config.json").write_text(json.dumps(hf_config(family)))
    if family == "instructblip":
        vocab = wordpiece_vocab(folder / "qformer_tokenizer")
        if qformer == "json":
            transformers.BertTokenizerFast.from_pretrained(str(vocab.parent)).save_pretrained(str(vocab.parent))
            vocab.unlink()
    return folder


def transformers_folder(folder: Path, family: str) -> Path:
    """As transformers 5's processor ``save_pretrained`` writes it (image settings nested in its
    processor_config.json, no preprocessor_config.json, the tokenizer as tokenizer.json only)."""
    source = hub_layout(folder.parent / f"{folder.name}-source", family, qformer="json")
    loaded = (transformers.InstructBlipProcessor if family == "instructblip" else transformers.Blip2Processor
              ).from_pretrained(str(source))
    loaded.save_pretrained(str(folder))
    assert not (folder / "preprocessor_config.json").exists() and not (folder / "spiece.model").exists()
    shutil.copy(source / "config.json", folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip2-processors")
    return {family: hub_layout(root / family, family) for family in FAMILIES}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A fresh download cache: the loopback Hub's commit ids repeat across sessions."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation and backend notices
        return fn(*args, **kwargs)


# -- pixels --------------------------------------------------------------------------------------


def test_pixels_match_blip_image_processor_on_a_real_photo(folders):
    processor = PaliProcessor.from_pretrained(folders["blip2"])
    reference = quiet(transformers.BlipImageProcessor.from_pretrained, str(folders["blip2"]))
    worst = {}
    for name, image in photos().items():
        ours = processor(images=image)["pixel_values"]
        theirs = quiet(reference, image, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, SIZE, SIZE), name
        worst[name] = float((ours - theirs).abs().max())
    assert max(worst.values()) < 1e-2, worst


def test_the_preprocessor_config_is_read(folders, tmp_path):
    folder = shutil.copytree(folders["blip2"], tmp_path / "b")
    settings = {"size": {"height": 40, "width": 40}, "resample": 2, "image_mean": [0.1, 0.2, 0.3],
                "image_std": [0.5, 0.6, 0.7], "rescale_factor": 0.5 / 255}
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    config = PaliProcessor.from_pretrained(folder).config
    assert (config.image_size, config.resample, config.image_backend) == (40, "bilinear", "pil")
    assert config.image_mean == [0.1, 0.2, 0.3] and config.image_std == [0.5, 0.6, 0.7]
    assert config.rescale_factor == pytest.approx(0.5 / 255)
    white = PaliProcessor.from_pretrained(folder)(images=Image.new("RGB", (9, 7), "white"))["pixel_values"]
    torch.testing.assert_close(white[0, :, 0, 0], (0.5 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.5, 0.6, 0.7]))


def test_both_resize_backends_keep_pixels_in_range_and_follow_their_reference():
    from pali.processing.image import ImageProcessor

    full = photo()
    array = np.array(full)
    torch_bicubic = ImageProcessor(48, resample="bicubic")([full, torch.from_numpy(array).permute(2, 0, 1)])
    assert torch_bicubic.min() >= -1 and torch_bicubic.max() <= 1  # bicubic overshoots; clamped to pixels
    pil = ImageProcessor(48, resample="lanczos", backend="pil", mean=(0, 0, 0), std=(1, 1, 1))
    expected = torch.from_numpy(np.asarray(full.resize((48, 48), Image.Resampling.LANCZOS))).permute(2, 0, 1) / 255
    for form in (full, array, torch.from_numpy(array).float() / 255):  # every input form, one picture
        torch.testing.assert_close(pil(form)[0], expected, atol=0, rtol=0)
    with pytest.raises(InputError, match="not one the torch backend has"):
        ImageProcessor(48, resample="lanczos")


@pytest.mark.parametrize("settings, match", [
    ({"size": {"height": 40, "width": 32}}, "not a square"),
    ({"size": {"shortest_edge": 40}}, "not a square"),
    ({"do_center_crop": True}, "centre crop"),
    ({"resample": 9}, "not a PIL filter"),
    ({"do_resize": False}, "do_resize is off"),
    ({"resample": [3]}, "not a PIL filter"),
    ({"image_mean": [0.5, 0.5]}, "image_mean must be 3 numbers"),
    ({"image_std": "0.5"}, "image_std must be 3 numbers"),
    ({"rescale_factor": "1/255"}, "rescale_factor must be a finite float"),
    ({"size": {"height": "a", "width": "a"}}, "image_size must be a positive integer"),
    ([1, 2], "expected a JSON object"),
])
def test_image_settings_pali_cannot_follow_are_refused(folders, tmp_path, settings, match):
    folder = shutil.copytree(folders["blip2"], tmp_path / "b")
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises((CheckpointError, ConfigError), match=match):
        PaliProcessor.from_pretrained(folder)


# -- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["blip2", "mblip"])
def test_ids_match_sentencepiece_and_t5_tokenizer(folders, family):
    import sentencepiece as spm

    processor = PaliProcessor.from_pretrained(folders[family])
    sp = spm.SentencePieceProcessor(model_file=str(folders[family] / "spiece.model"))
    reference = quiet(transformers.AutoTokenizer.from_pretrained, str(folders[family]))
    assert "<image>" in reference.get_vocab()  # transformers' placeholder token is there ...
    for text in TEXTS:
        ids = processor(text=text)["input_ids"][0].tolist()
        assert ids == sp.encode(text) + [sp.eos_id()], text  # ... and ignored: typed, it is plain text
        if "<image>" not in text and family == "blip2":  # T5Tokenizer ignores byte fallback (mT5's)
            assert ids == reference(text).input_ids, text
    assert processor.tokenizer.vocab_size == sp.get_piece_size() + 100


def test_blip2_and_mblip_make_no_qformer_ids_instructblip_does(folders):
    for family in ("blip2", "mblip"):
        batch = PaliProcessor.from_pretrained(folders[family])(text="what is it?")
        assert not any(key.startswith("qformer") for key in batch)
    processor = PaliProcessor.from_pretrained(folders["instructblip"])
    batch = processor(images=[photo(), photo()], text=["What colour is the car?", "a dog"])
    reference = transformers.BertTokenizerFast.from_pretrained(str(folders["instructblip"] / "qformer_tokenizer"))
    expected = reference(["What colour is the car?", "a dog"], padding=True, return_tensors="pt")
    assert torch.equal(batch["qformer_input_ids"], expected["input_ids"])
    assert torch.equal(batch["qformer_attention_mask"], expected["attention_mask"])


@pytest.mark.parametrize("layout", ["json", "vocab"])
def test_instructblip_qformer_tokenizer_from_either_file(tmp_path, layout):
    folder = hub_layout(tmp_path / "ib", "instructblip", qformer=layout)
    assert (folder / "qformer_tokenizer" / ("tokenizer.json" if layout == "json" else "vocab.txt")).is_file()
    ids = PaliProcessor.from_pretrained(folder)(text="What colour is the car?")["qformer_input_ids"]
    reference = transformers.BertTokenizerFast.from_pretrained(str(folder / "qformer_tokenizer"))
    assert ids[0].tolist() == reference("What colour is the car?").input_ids


def test_long_prompts_warn_once_per_tokenizer_and_keep_the_closing_token(folders):
    processor = PaliProcessor.from_pretrained(folders["instructblip"])
    with pytest.warns(UserWarning) as caught:
        batch = processor(text=" ".join(["cat"] * 300))
    assert [str(w.message).split(" has ")[0] for w in caught] == ["text 0", "Q-Former text 0"]
    limit = processor.config.max_length
    assert batch["input_ids"].shape[1] == batch["qformer_input_ids"].shape[1] == limit
    assert batch["input_ids"][0, -1] == processor.tokenizer.eos_id
    assert batch["qformer_input_ids"][0, -1] == processor.qformer_tokenizer.backend.token_to_id("[SEP]")


# -- files: Hub, local, save/reload ---------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_the_hub_a_local_folder_and_a_reload_agree(folders, hub, hub_cache, tmp_path, family):  # noqa: F811
    hub.commit(f"org/{family}-proc", folders[family])
    from_hub = PaliProcessor.from_pretrained(f"org/{family}-proc")
    t5saved = transformers_folder(tmp_path / "t5saved", family)
    local = PaliProcessor.from_pretrained(t5saved)
    hub.commit(f"org/{family}-t5saved", t5saved)  # the Hub's answer for the absent spiece.model: tokenizer.json
    local_from_hub = PaliProcessor.from_pretrained(f"org/{family}-t5saved")
    from_hub.save_pretrained(tmp_path / "ours")
    reloaded = PaliProcessor.from_pretrained(tmp_path / "ours")
    config = from_hub.config.to_dict()
    assert config["prompt_set"] == family and config["image_backend"] == "pil" and config["resample"] == "bicubic"
    assert config["qformer"] == (family == "instructblip")
    assert local.config.to_dict() == local_from_hub.config.to_dict() == reloaded.config.to_dict() == config
    saved = json.loads((tmp_path / "ours" / "processor_config.json").read_text())
    assert saved == config  # what we read is what we record
    inputs = dict(images=[photo(), photo().convert("L")], text=["a photo of a cat", "what is it?"])
    expected = from_hub(**inputs)
    for other in (local, local_from_hub, reloaded):
        got = other(**inputs)
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), key


def test_missing_files_are_named(folders, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(CheckpointError, match="no processor files.*processor_config.json.*preprocessor_config.json"):
        PaliProcessor.from_pretrained(bare)
    no_spiece = shutil.copytree(folders["blip2"], tmp_path / "nospiece")
    (no_spiece / "spiece.model").unlink()
    (no_spiece / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="neither spiece.model nor transformers' tokenizer.json"):
        PaliProcessor.from_pretrained(no_spiece)
    no_qformer = shutil.copytree(folders["instructblip"], tmp_path / "noq")
    shutil.rmtree(no_qformer / "qformer_tokenizer")
    with pytest.raises(CheckpointError, match="needs its Q-Former tokenizer"):
        PaliProcessor.from_pretrained(no_qformer)
    opt = shutil.copytree(folders["blip2"], tmp_path / "opt")
    (opt / "config.json").write_text(json.dumps({"model_type": "blip-2", "text_config": {"model_type": "opt"}}))
    with pytest.raises(CheckpointError, match="decoder-only"):
        PaliProcessor.from_pretrained(opt)


def test_the_prompt_set_can_be_overridden(folders, tmp_path):
    processor = PaliProcessor.from_pretrained(folders["blip2"], prompt_set="instructblip")
    assert processor.config.prompt_set == "instructblip"
    processor.save_pretrained(tmp_path / "p")
    assert PaliProcessor.from_pretrained(tmp_path / "p", prompt_set="mblip").config.prompt_set == "mblip"
    with pytest.raises(CheckpointError, match="unknown prompt set 'nope'"):
        PaliProcessor.from_pretrained(folders["blip2"], prompt_set="nope")


# -- prompts per family --------------------------------------------------------------------------


PROMPTS = {  # family -> (caption in de, answer in en, classify's prompt)
    "blip2": ("a photo of", "Question: What is it? Answer:", "a photo of"),
    "instructblip": ("A short image description:", "Question: What is it? Short answer:", "A short image description:"),
    "mblip": ("Describe the image in German.", "Answer in English: What is it?", "Describe the image in English."),
    "pali": ("Generate the alt_text in de at 0: <extra_id_0>", "Answer in en: What is it? <extra_id_0>",
             "Generate the alt_text in en at 0: <extra_id_0>"),
}


class Recorder:
    """Stands in for the model: records the processor's batches, answers with eos at once."""

    def __init__(self, processor, config) -> None:
        self.processor, self.config, self.texts = processor, config, []

    def parameters(self):
        yield torch.zeros(1)

    def generate(self, **batch):
        self.texts.append(self.processor.batch_decode(batch["input_ids"]))
        return torch.ones(batch["input_ids"].shape[0], 1, dtype=torch.long)

    def score(self, **batch):
        self.texts.append(self.processor.batch_decode(batch["input_ids"]))
        return torch.zeros(batch["input_ids"].shape[0], batch["targets"].shape[0])


@pytest.mark.parametrize("family", list(PROMPTS))
def test_each_family_is_asked_in_its_own_words(folders, family):
    if family == "pali":
        processor = PaliProcessor.from_pretrained("pali-demo")
    else:
        processor = PaliProcessor.from_pretrained(folders[family])
    vocab = SimpleNamespace(vocab_size=processor.tokenizer.vocab_size)
    model = Recorder(processor, SimpleNamespace(text=vocab, connector=SimpleNamespace()))
    pipe = pali.pipeline(model, processor)
    assert pipe.prompts.name == family
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe.caption(photo(), lang="de")
        pipe.answer(photo(), "What is it?")
        pipe.classify(photo(), ["cat", "dog"])
    caption, answer, classify = (processor.tokenizer.decode(processor.tokenizer.encode(p)) for p in PROMPTS[family])
    assert model.texts == [[caption], [answer], [classify]]
    german = [str(w.message) for w in caught if "language 'de'" in str(w.message)]
    assert bool(german) == (family in ("blip2", "instructblip"))  # English-only families warn


@pytest.mark.parametrize("family", ["blip2", "instructblip", "mblip"])
def test_tasks_a_family_never_learned_are_errors(folders, family):
    processor = PaliProcessor.from_pretrained(folders[family])
    for task, kwargs in (("detect", {"labels": "cat"}), ("ocr", {})):
        with pytest.raises(InputError, match=f"{task} is not a task the {family} prompt set"):
            get_head(task).run(None, processor, photo(), **kwargs)
    with pytest.raises(InputError, match="cannot continue a caption"):
        get_head("caption").prompt(processor, prefix="a dog")


def test_prompt_strings():
    from pali.processing.prompts import BLIP2, INSTRUCTBLIP, MBLIP, get_prompt_set

    assert MBLIP.caption_prompt("de") == "Describe the image in German."
    assert MBLIP.vqa_prompt("Wo ist die Katze?", "de") == "Answer in German: Wo ist die Katze?"
    assert BLIP2.vqa_prompt("what is  this?") == "Question: what is this? Answer:"
    assert INSTRUCTBLIP.caption_prompt() == "A short image description:"
    assert get_prompt_set("pali").caption_prompt("fr", "un chat") == "Generate the alt_text in fr at 2: un chat <extra_id_0>"
    with pytest.raises(InputError, match="unknown prompt set"):
        get_prompt_set("blip3")


def test_instructblip_pipeline_gives_the_instruction_to_the_qformer(folders, monkeypatch):
    import blip2_reference

    processor = PaliProcessor.from_pretrained(folders["instructblip"])
    vocab = processor.tokenizer.vocab_size
    small = blip2_reference.pali_twin(blip2_reference.hf_blip2(
        "t5", instruct=True, text_vocab=vocab, qformer_vocab=processor.qformer_tokenizer.vocab_size - 1))
    with pytest.raises(InputError, match="Q-Former tokenizer has .* ids but the model's Q-Former vocabulary only"):
        pali.pipeline(small, processor).answer(photo(), "What is it?")
    model = blip2_reference.pali_twin(blip2_reference.hf_blip2(
        "t5", instruct=True, text_vocab=vocab, qformer_vocab=processor.qformer_tokenizer.vocab_size))
    processor.config.image_size = blip2_reference.IMAGE
    processor = PaliProcessor(processor.tokenizer, processor.config, processor.qformer_tokenizer)
    batch = processor(images=photo(), text="Question: What is it? Short answer:")
    assert {"qformer_input_ids", "qformer_attention_mask"} <= batch.keys()
    seen, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or generate(**kw))
    pipe = pali.pipeline(model, processor, max_new_tokens=6)
    # the VQA head strips the decoded answer (a leading piece or " ⁇ " can start or end it)
    assert pipe.answer(photo(), "What is it?").text == processor.decode(generate(**batch, max_new_tokens=6)[0]).strip()
    for key in batch:
        assert torch.equal(seen[0][key].cpu(), batch[key]), key
    with torch.no_grad():  # and the instruction matters to the model
        plain = {k: v for k, v in batch.items() if not k.startswith("qformer")}
        assert not torch.allclose(model.encode(**batch)[0], model.encode(**plain)[0])
    ranked = pipe.classify(photo(), ["cat", "dog"])  # score takes the Q-Former ids too
    assert sorted(r.label for r in ranked) == ["cat", "dog"]


# -- convert + CLI on a tiny random mBLIP ----------------------------------------------------------


@pytest.mark.slow
def test_cli_captions_in_german_with_a_converted_mblip(tmp_path, capsys):
    import blip2_reference

    model = blip2_reference.hf_blip2("mt5", text_vocab=512)  # room for the tiny byte-fallback spiece (400 + 100)
    source = blip2_reference.write_safetensors_layout(model, tmp_path / "mblip")
    processor_files = hub_layout(tmp_path / "proc", "mblip")
    for name in ("spiece.model", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(processor_files / name, source)
    assert main(["convert", str(source), str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "out"
    assert {"config.json", "spiece.model", "processor_config.json"} <= {p.name for p in out.iterdir()}
    image = tmp_path / "photo.png"  # lossless: the CLI sees exactly photo()'s pixels
    photo().save(image)
    run = subprocess.run([sys.executable, "-m", "pali", "caption", str(image), "--model", str(out), "--lang", "de"],
                         capture_output=True, text=True, env={**_env(), "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr
    pipe = pali.pipeline(pali.PaliModel.from_pretrained(out), PaliProcessor.from_pretrained(out))
    assert pipe.prompts.name == "mblip"
    assert run.stdout == pipe.caption(photo(), lang="de").text + "\n"
    # the model's greedy answer to mBLIP's own prompt, computed here without the pipeline
    processor = pipe.processor
    batch = processor(images=photo(), text="Describe the image in German.")
    assert run.stdout.strip() == processor.decode(pipe.model.generate(**batch)[0])
    assert main(["detect", str(image), "cat", "--model", str(out)]) == 2
    assert "detect is not a task the mblip prompt set" in capsys.readouterr().err


def test_convert_without_spiece_writes_the_weights_and_says_why(tmp_path):
    import blip2_reference

    model = blip2_reference.hf_blip2("t5")
    source = blip2_reference.write_safetensors_layout(model, tmp_path / "blip2")
    transformers.BlipImageProcessor(size={"height": SIZE, "width": SIZE}).to_json_file(source / "preprocessor_config.json")
    with pytest.warns(UserWarning, match="processor files are not converted.*spiece.model"):
        pali.convert.convert(source, tmp_path / "out", processor=shipped_processor(source))
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "processor_config.json").exists()


def _env() -> dict[str, str]:
    import os

    src = str(Path(pali.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
