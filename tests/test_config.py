import json

import pytest
import torch

import pali
from pali import ConfigError, PaliConfig, RegistryError, get_config, list_presets


def test_list_presets_has_paper_sizes_and_towers():
    names = list_presets()
    for name in ["pali-3b", "pali-15b", "pali-17b", "pali-tiny", "vit-g14", "vit-e14", "siglip-so400m14",
                 "vit-b16", "mt5-small", "mt5-xxl"]:
        assert name in names
    assert set(list_presets("pali")) == {"pali-3b", "pali-15b", "pali-17b", "pali-tiny"}


def test_unknown_preset_lists_known_ones():
    with pytest.raises(RegistryError) as e:
        get_config("pali-99b")
    assert "pali-99b" in str(e.value) and "pali-3b" in str(e.value) and "mt5-large" in str(e.value)
    with pytest.raises(KeyError):  # also catchable as the builtin a caller expects
        pali.PaliModel.from_preset("nope")


@pytest.mark.parametrize("name", ["pali-3b", "pali-15b", "pali-17b", "pali-tiny"])
def test_json_round_trip(name, tmp_path):
    config = get_config(name)
    config.save(tmp_path / "config.json")
    assert PaliConfig.load(tmp_path / "config.json") == config
    assert json.loads(config.to_json())["vision"]["kind"] == "vit"


def test_resolution_override():
    assert get_config("pali-17b").vision.num_tokens == 256
    assert get_config("pali-17b", image_size=588).vision.num_tokens == 1764
    assert get_config("vit-g14", image_size=588).num_tokens == 1764
    with pytest.raises(ConfigError):
        get_config("mt5-small", image_size=224)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        get_config("pali-3b", image_size=225)


def test_bad_config_dicts_are_named():
    data = get_config("pali-tiny").to_dict()
    data["text"]["n_layers"] = 3
    with pytest.raises(ConfigError, match="n_layers"):
        PaliConfig.from_dict(data)
    data = get_config("pali-tiny").to_dict()
    data["vision"]["kind"] = "resnet"
    with pytest.raises(ConfigError, match="resnet"):
        PaliConfig.from_dict(data)
    with pytest.raises(ConfigError, match="JSON"):
        PaliConfig.from_json("{not json")
    data = get_config("pali-tiny").to_dict()
    data["text"]["d_model"] = -4
    with pytest.raises(ConfigError, match="d_model"):
        PaliConfig.from_dict(data)


def test_built_model_follows_config():
    config = get_config("pali-tiny")
    model = pali.PaliModel(config)
    assert model.config is config
    assert len(model.vision.blocks) == config.vision.depth
    assert len(model.text.encoder.layers) == config.text.num_encoder_layers
    assert model.projection.weight.shape == (config.text.d_model, config.vision.width)
    assert isinstance(model.vision, torch.nn.Module)
