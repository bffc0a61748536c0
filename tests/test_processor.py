"""Image processing against PIL's own resize, and the processor's batch layout and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pali.testing.spm import train_spm

from pali import PaliModel
from pali.errors import CheckpointError, ConfigError, InputError
from pali.processing.image import ImageProcessor
from pali.processing.processor import PROCESSOR_CONFIG_NAME, PaliProcessor, ProcessorConfig
from pali.processing.tokenizer import Tokenizer


def rgb_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def pil_expected(pixels: np.ndarray, size: int) -> torch.Tensor:
    """Independent reference: PIL's BILINEAR resize of each channel in float mode, then x/127.5 - 1."""
    channels = []
    for c in range(3):
        plane = Image.fromarray(pixels[..., c].astype(np.float32), mode="F")
        channels.append(np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR)))
    return torch.from_numpy(np.stack(channels)) / 127.5 - 1


@pytest.mark.parametrize("shape", [(57, 83), (16, 40), (10, 7), (32, 32)])
def test_resize_and_scale_match_pil(shape):
    pixels = rgb_image(*shape)
    out = ImageProcessor(32)(pixels)
    assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], pil_expected(pixels, 32), atol=2e-4, rtol=0)


def test_hand_computed_values():
    """A constant image stays constant; a 2x2 -> 1x1 antialiased resize is the mean."""
    flat = np.full((9, 13, 3), (0, 51, 255), dtype=np.uint8)
    out = ImageProcessor(4)(flat)[0]
    for c, value in enumerate((0, 51, 255)):
        torch.testing.assert_close(out[c], torch.full((4, 4), value / 127.5 - 1))
    square = np.array([[[0, 0, 0], [255, 255, 255]], [[51, 0, 0], [102, 0, 0]]], dtype=np.uint8)
    mean = square.reshape(4, 3).mean(0)
    torch.testing.assert_close(ImageProcessor(1)(square)[0, :, 0, 0], torch.tensor(mean / 127.5 - 1, dtype=torch.float32))


def test_every_input_form_gives_the_same_batch():
    pixels = rgb_image(20, 30)
    proc = ImageProcessor(16)
    expected = proc(pixels)
    rgba = np.concatenate([pixels, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    forms = {
        "pil": Image.fromarray(pixels),
        "pil rgba (alpha dropped)": Image.fromarray(rgba, mode="RGBA"),
        "numpy rgba": rgba,
        "numpy float": pixels.astype(np.float64) / 255,
        "torch chw": chw,
        "torch hwc": torch.from_numpy(pixels),
        "torch chw float": chw.float() / 255,
    }
    for name, image in forms.items():
        torch.testing.assert_close(proc(image), expected, atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(proc([pixels, pixels]), expected.expand(2, -1, -1, -1))
    torch.testing.assert_close(proc(np.stack([pixels, pixels])), expected.expand(2, -1, -1, -1))


def test_grayscale_is_repeated_to_rgb():
    gray = rgb_image(12, 12)[..., 0]
    proc = ImageProcessor(8)
    expected = proc(np.repeat(gray[..., None], 3, axis=-1))
    for image in (gray, gray[..., None], Image.fromarray(gray, mode="L"), torch.from_numpy(gray)[None]):
        torch.testing.assert_close(proc(image), expected, atol=1e-5, rtol=0)


def test_original_sizes_are_height_width():
    proc = ImageProcessor(8)
    images = [rgb_image(20, 30), Image.fromarray(rgb_image(5, 9)), torch.zeros(3, 4, 6)]
    assert proc.original_sizes(images) == [(20, 30), (5, 9), (4, 6)]


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((1, 2, 8, 8, 3), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (Image.new("RGB", (0, 4)), "empty"),
        ("cat.jpg", "str; expected a PIL image"),
        ({"pixels": 1}, "dict"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (torch.full((3, 4, 4), float("inf")), "NaN or inf"),
        (np.full((4, 4, 3), 200.0), r"\[0, 1\]"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (torch.zeros((3, 4, 4), dtype=torch.int32), "dtype"),
        (np.zeros((4, 4, 2), np.uint8), "channel"),
        ([], "no images"),
    ],
)
def test_bad_images_raise(image, match):
    with pytest.raises(InputError, match=match):
        ImageProcessor(8)(image)


def test_bad_image_size():
    with pytest.raises(InputError, match="image_size"):
        ImageProcessor(0)


# -- processor ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    tokenizer = Tokenizer.from_pretrained(train_spm(tmp_path_factory.mktemp("spm")))
    return PaliProcessor(tokenizer, ProcessorConfig(image_size=32, max_length=24, max_target_length=12))


def test_batch_layout_and_labels(processor):
    tok = processor.tokenizer
    images = [rgb_image(40, 30), rgb_image(30, 40, seed=1)]
    prompts = ["Answer in en: what is it? <extra_id_0>", "Generate the ocr_text in en: <extra_id_0>"]
    batch = processor(images=images, text=prompts, suffix=["a cat", "a red car"])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels"}
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"][0].tolist()[: len(tok.encode(prompts[0]))] == tok.encode(prompts[0])
    labels = batch["labels"]
    assert labels[0].tolist() == tok.encode("a cat") + [-100] * (labels.shape[1] - len(tok.encode("a cat")))
    assert labels[1].tolist() == tok.encode("a red car")
    assert labels[labels != -100].tolist().count(tok.eos_id) == 2
    # The prompt's tokens go to the encoder only: the loss sees exactly the suffix positions.
    model = PaliModel.from_preset("pali-tiny").eval()
    out = model(**batch)
    assert out.logits.shape[:2] == labels.shape and torch.isfinite(out.loss)


def test_truncation_keeps_eos(processor):
    batch = processor(text="word " * 100, suffix="a cat " * 50)
    assert batch["input_ids"].shape[1] == 24 and batch["input_ids"][0, -1] == processor.tokenizer.eos_id
    assert batch["labels"].shape[1] == 12 and batch["labels"][0, -1] == processor.tokenizer.eos_id


def test_decode_stops_at_eos_and_skips_padding(processor):
    tok = processor.tokenizer
    row = [0] + tok.encode("a cat") + [tok.encode("a dog")[0], 0, 0]
    assert processor.decode(row) == "a cat"
    assert processor.batch_decode(torch.tensor([row, row])) == ["a cat", "a cat"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images=[rgb_image(8, 8)] * 2, text=["a"]), "batch sizes differ"),
        (dict(text=["a", "b"], suffix=["c"]), "batch sizes differ"),
        (dict(suffix="a cat"), "nothing to condition"),
        (dict(), "give images, text or both"),
        (dict(text=[1, 2]), "text must be a str"),
        (dict(text=[]), "text must be"),
    ],
)
def test_bad_processor_calls(processor, kwargs, match):
    with pytest.raises(InputError, match=match):
        processor(**kwargs)


def test_save_and_load_round_trip(processor, tmp_path):
    target = tmp_path / "proc"
    processor.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == [PROCESSOR_CONFIG_NAME, "spiece.model"]
    again = PaliProcessor.from_pretrained(target)
    assert again.config == processor.config
    assert again.tokenizer.encode("a cat 🐱") == processor.tokenizer.encode("a cat 🐱")


def test_save_beside_a_checkpoint_and_refuse_overwrite(processor, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match="overwrite"):
        processor.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", PROCESSOR_CONFIG_NAME, "spiece.model"]


def test_failed_save_leaves_nothing(processor, tmp_path, monkeypatch):
    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(processor.tokenizer, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        processor.save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    with pytest.raises(OSError, match="disk full"):
        processor.save_pretrained(tmp_path / "old")
    assert list((tmp_path / "old").iterdir()) == []


def test_bad_saved_processors(processor, tmp_path):
    processor.save_pretrained(tmp_path / "p")
    config = tmp_path / "p" / PROCESSOR_CONFIG_NAME
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        PaliProcessor.from_pretrained(tmp_path / "p")
    config.write_text(json.dumps({"image_size": 32, "colour": "red"}))
    with pytest.raises(ConfigError, match=r"processor_config.json.*unknown fields \['colour'\]"):
        PaliProcessor.from_pretrained(tmp_path / "p")
    config.write_text(json.dumps({"image_size": -3}))
    with pytest.raises(ConfigError, match="image_size must be a positive integer"):
        PaliProcessor.from_pretrained(tmp_path / "p")
    with pytest.raises(CheckpointError, match="directory or Hub repo"):
        PaliProcessor.from_pretrained(tmp_path / "p" / "spiece.model")
    (tmp_path / "q").mkdir()
    with pytest.raises(CheckpointError, match="no processor_config.json"):
        PaliProcessor.from_pretrained(tmp_path / "q")


def test_from_hub_fetches_both_files(processor, tmp_path, monkeypatch):
    import huggingface_hub

    processor.save_pretrained(tmp_path / "cache")
    fetched = []

    def fake_download(repo_id, filename, revision=None):
        fetched.append((repo_id, filename))
        return str(tmp_path / "cache" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("pali.hub.download.list_files", lambda repo, revision, token: sorted(
        p.name for p in (tmp_path / "cache").iterdir()))  # the one quick look-up before downloading
    again = PaliProcessor.from_pretrained("me/pali-tiny")
    assert fetched == [("me/pali-tiny", PROCESSOR_CONFIG_NAME), ("me/pali-tiny", "spiece.model")]
    assert again.config == processor.config
