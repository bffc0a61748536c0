"""Configs, text and images that pali cannot handle are refused with the error family, early.

Absurd configs (10**6 layers, a 10**12-element embedding) must fail on construction, before a
model is built even on the meta device; the text and image entry points take any string or
array and answer with a batch or an InputError.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pali.testing.spm import train_spm

from pali import ConfigError, InputError, PaliError, PaliModel, PaliProcessor, Tokenizer
from pali.config import PaliConfig, size_limit
from pali.processing.image import ImageProcessor
from pali.config.presets import get_config
from pali.processing.processor import ProcessorConfig
from pali.models.text.mt5_config import MT5Config
from pali.models.vision.vit_config import ViTConfig


def _pali_dict(**text_changes) -> dict:
    config = get_config("pali-tiny").to_dict()
    config["text"].update(text_changes)
    return config


@pytest.mark.parametrize("changes, match", [
    ({"num_encoder_layers": 10**6}, r"MT5Config.num_encoder_layers = 1000000 exceeds the limit 512"),
    ({"vocab_size": 10**6, "d_model": 10**6}, r"MT5Config.d_model = 1000000 exceeds the limit 65536"),
    ({"vocab_size": 10**12}, r"MT5Config.vocab_size = 1000000000000 exceeds the limit"),
    ({"d_ff": -1}, r"MT5Config.d_ff must be a positive integer, got -1"),
    ({"d_ff": 3.5}, r"MT5Config.d_ff must be a positive integer, got 3.5"),
    ({"num_heads": True}, r"MT5Config.num_heads must be a positive integer, got True"),
    ({"norm_eps": "1e-6"}, r"MT5Config.norm_eps must be a finite float, got '1e-6'"),
    ({"norm_eps": float("nan")}, r"MT5Config.norm_eps must be a finite float"),
    ({"eos_token_id": 10**9}, r"MT5Config.eos_token_id = 1000000000 is outside the vocabulary \[0, 256\)"),
    ({"pad_token_id": -1}, r"pad_token_id = -1 is outside the vocabulary"),
])
def test_absurd_configs_fail_fast_naming_the_field(changes, match, monkeypatch):
    """Fast because nothing is built: the config is refused before any module exists."""

    def no_module(self, *args, **kwargs):
        raise AssertionError("a module was built before the config was validated")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_module)
    with pytest.raises(ConfigError, match=match):
        PaliConfig.from_json(json.dumps(_pali_dict(**changes)))


def test_config_kinds_and_types():
    config = _pali_dict()
    config["vision"]["kind"] = ["vit"]
    with pytest.raises(ConfigError, match=r"PaliConfig.vision.kind must be a string"):
        PaliConfig.from_dict(config)
    with pytest.raises(ConfigError, match="not valid JSON: RecursionError"):
        PaliConfig.from_json("[" * 100_000)
    with pytest.raises(ConfigError, match="not valid JSON: ValueError"):
        PaliConfig.from_json("9" * 5000)
    with pytest.raises(ConfigError, match=r"ViTConfig.image_size = 100000 exceeds the limit 16384"):
        ViTConfig(image_size=100000, patch_size=10)
    with pytest.raises(ConfigError, match=r"ViTConfig.depth = 1000000"):
        ViTConfig(depth=10**6)


def test_limits_allow_every_preset():
    from pali.config.presets import list_presets

    for name in list_presets():
        config = get_config(name)
        type(config).from_dict(config.to_dict())  # validates
    assert size_limit("num_decoder_layers") == 512 and size_limit("hidden_size") == 65536


def test_parameter_count_over_the_limit_is_refused(tmp_path, monkeypatch):
    import pali.io.guards

    torch.manual_seed(0)
    saved = PaliModel.from_preset("pali-tiny").save_pretrained(tmp_path / "m")
    monkeypatch.setattr(pali.io.guards, "MAX_PARAMETERS", 1000)
    with pytest.raises(PaliError, match=r"config.json describes [\d,]+ parameters, over the limit of 1,000"):
        PaliModel.from_pretrained(saved)


# -- text ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    tokenizer = Tokenizer(train_spm(tmp_path_factory.mktemp("spm")))
    return PaliProcessor(tokenizer, ProcessorConfig(image_size=32, max_length=8, max_target_length=6))


def test_truncation_false_raises_instead_of_cutting(processor):
    long = "the quick brown fox jumps over the lazy dog " * 3
    assert processor(text=long)["input_ids"].shape[1] == 8  # default: truncate, keep eos
    with pytest.raises(InputError, match=r"text 0 has \d+ tokens > max_length 8 and truncation=False"):
        processor(text=long, truncation=False)
    with pytest.raises(InputError, match=r"suffix 0 has \d+ tokens > max_target_length 6 and truncation=False"):
        processor(text="a", suffix=long, truncation=False)
    strict = PaliProcessor(processor.tokenizer, ProcessorConfig(image_size=32, max_length=8, truncation=False))
    with pytest.raises(InputError, match="truncation=False"):
        strict(text=long)
    assert strict(text="a dog")["input_ids"].shape[1] <= 8


def test_truncation_setting_round_trips(processor, tmp_path):
    strict = PaliProcessor(processor.tokenizer, ProcessorConfig(image_size=32, truncation=False))
    strict.save_pretrained(tmp_path / "p")
    assert PaliProcessor.from_pretrained(tmp_path / "p").config.truncation is False
    (tmp_path / "p" / "processor_config.json").write_text(json.dumps({"truncation": "no"}))
    with pytest.raises(ConfigError, match="ProcessorConfig.truncation must be a finite bool"):
        PaliProcessor.from_pretrained(tmp_path / "p")


@pytest.mark.parametrize("kwargs, match", [
    ({"text": ""}, "text 0 is empty"),
    ({"text": ["a dog", "  \n"]}, "text 1 is empty"),
    ({"text": "a \ud800 b"}, "not valid Unicode: surrogates not allowed at position 2"),
])
def test_bad_text(processor, kwargs, match):
    with pytest.raises(InputError, match=match):
        processor(**kwargs)


def test_empty_suffix_is_a_target(processor):
    assert processor(text="caption en", suffix="")["labels"].tolist() == [[1]]


@pytest.mark.parametrize("ids, match", [
    (["a"], "ids must be a sequence of ints"),
    ([1.5], "ids must be a sequence of ints"),
    ("abc", "ids must be a sequence of ints"),
    (torch.tensor([1.0, 2.0]), "1-D integer tensor"),
    (torch.ones(2, 2, dtype=torch.long), "1-D integer tensor"),
    ([10**30], "outside the vocabulary"),
    ([-1], "outside the vocabulary"),
])
def test_bad_ids_to_decode(processor, ids, match):
    with pytest.raises(InputError, match=match):
        processor.decode(ids)


def test_numpy_and_tensor_ids_decode(processor):
    ids = processor(text="a dog")["input_ids"][0]
    assert processor.decode(ids.numpy()) == processor.decode(ids) == processor.decode(ids.tolist())


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(text=st.text(max_size=60), suffix=st.text(max_size=60), truncation=st.booleans())
def test_any_string_gives_a_batch_or_input_error(processor, text, suffix, truncation):
    try:
        batch = processor(text=text, suffix=suffix, truncation=truncation)
    except InputError:
        return
    assert batch["input_ids"].shape[1] <= 8 and batch["labels"].shape[1] <= 6
    assert batch["input_ids"].dtype == torch.long


# -- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("image, match", [
    (np.full((4, 4, 3), np.inf, np.float32), "NaN or inf"),
    (np.zeros((4, 4, 3), np.int32), "numpy dtype int32 unsupported"),
    (torch.zeros(4, 4, 3, dtype=torch.bool), "dtype torch.bool unsupported"),
    (torch.zeros(3, 4, 4, dtype=torch.complex64), "unsupported"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((2, 2, 2, 2, 3), np.uint8), "shape"),
    (np.zeros((), np.uint8), "shape"),
    (np.float32(1.5) * np.ones((4, 4, 3), np.float32), r"float pixels must be in \[0, 1\]"),
    ("image.png", "is a str"),
    ([], "no images given"),
])
def test_bad_images(image, match):
    with pytest.raises(InputError, match=match):
        ImageProcessor(32)(image)


def test_bad_image_sizes():
    for size in (True, 0, -3, 2.0):
        with pytest.raises(InputError, match="image_size must be a positive int"):
            ImageProcessor(size)
    with pytest.raises(ConfigError, match="ProcessorConfig.image_size = 100000 exceeds the limit 16384"):
        ProcessorConfig(image_size=100000)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_any_small_array_gives_pixels_or_input_error(data):
    shape = data.draw(st.lists(st.integers(0, 5), max_size=4))
    dtype = data.draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_]))
    values = data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, np.nan]))
    image = np.full(shape, values).astype(dtype) if dtype != np.uint8 or np.isfinite(values) else np.zeros(shape, dtype)
    try:
        pixels = ImageProcessor(8)(image)
    except InputError:
        return
    assert pixels.shape[1:] == (3, 8, 8) and torch.isfinite(pixels).all()
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_mt5_config_direct_construction_is_capped():
    with pytest.raises(ConfigError, match="num_decoder_layers"):
        MT5Config(num_decoder_layers=10**6)
