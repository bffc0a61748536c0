import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pali
from pali import ConfigError, PaliConfig, RegistryError, get_config, list_presets
from pali.config import Config
from pali.config.registry import CONNECTORS, PRESETS, TEXT_STACKS, VISION_ENCODERS, Registry

ROOT = Path(__file__).resolve().parents[1]


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
    (tmp_path / "config.json").write_text(config.to_json())
    assert PaliConfig.from_json((tmp_path / "config.json").read_text()) == config
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
    assert type(model.vision) is VISION_ENCODERS.get(config.vision.kind)
    assert PaliConfig.from_json(config.to_json()) == config


# -- reading configs without the modules that build them -----------------------------------------


def _saved_configs() -> list[Path]:
    found = [p for p in (ROOT / "tests").rglob("config.json") if "vision" in json.loads(p.read_text())]
    return found + [ROOT / "src" / "pali" / "bundled" / "pali-demo" / "config.json"]


def test_configs_and_presets_load_without_torch():
    """Reading a config.json, the presets and the ``pali presets`` listing import no torch: configs
    are found by kind in the registries' config table, not through the modules that build them."""
    code = (
        "import sys, json\n"
        "from pali import PaliConfig, get_config, list_presets\n"
        "for path in json.loads(sys.argv[1]):\n"
        "    PaliConfig.from_json(open(path).read())\n"
        "for name in list_presets():\n"
        "    get_config(name)\n"
        "from pali.cli import main\n"
        "main(['presets'])\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
        "print('torch-free')\n"
    )
    paths = json.dumps([str(p) for p in _saved_configs()])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, paths], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("torch-free") and "pali-3b" in result.stdout


@pytest.mark.parametrize("registry", [VISION_ENCODERS, TEXT_STACKS, CONNECTORS], ids=lambda r: r.kind)
def test_config_table_names_the_built_in_modules_config_class(registry):
    # Every built-in is named (another test, or a docs page run in this process, may have added
    # a plugin of its own: those are not pali's modules).
    built_in = [n for n in registry.names() if registry.get(n).__module__.startswith("pali.")]
    assert sorted(registry.configs) == built_in
    for kind in registry.configs:
        config_class = registry.config_class(kind)
        assert config_class is registry.get(kind).config_class and config_class.kind == kind


def test_presets_are_tables_read_by_the_registry():
    """Importing the modules that define presets registers nothing; the registry reads the tables."""
    code = (
        "import pali.models.vision.vit, pali.models.text.mt5, pali.models.connectors.qformer, pali.config.presets\n"
        "from pali.config.registry import PRESETS\n"
        "assert PRESETS._entries == {}, sorted(PRESETS._entries)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    from pali.models.vision.vit_config import PRESET_TABLE

    table = Registry("preset", tables=("pali.models.vision.vit_config:PRESET_TABLE",))
    assert table.names() == sorted(p.name for p in PRESET_TABLE)
    assert table.get("vit-g14").build() == PRESETS.get("vit-g14").build() == get_config("vit-g14")
    assert get_config("vit-g14") is not get_config("vit-g14")  # a fresh config each time


# -- validation from the annotations ---------------------------------------------------------------


@dataclass
class _Inner(Config):
    width: int = 4


@dataclass
class _Typed(Config):
    """Every kind of annotation a config uses; the old string table skipped all but the plain ones."""

    maybe: int | None = None
    ratio: float = 0.5
    flag: bool = False
    name: str = "x"
    label: str | None = None
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, str] = (1, "a")
    names: list[str] = field(default_factory=list)
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize("changes, message", [
    ({"maybe": "3"}, "_Typed.maybe must be a finite int | None, got '3'"),
    ({"maybe": True}, "_Typed.maybe must be a finite int | None, got True"),
    ({"maybe": 2.0}, "_Typed.maybe must be a finite int | None, got 2.0"),
    ({"ratio": math.inf}, "_Typed.ratio must be a finite float, got inf"),
    ({"ratio": "0.5"}, "_Typed.ratio must be a finite float"),
    ({"flag": 1}, "_Typed.flag must be a finite bool, got 1"),
    ({"name": None}, "_Typed.name must be a finite str, got None"),
    ({"label": 3}, "_Typed.label must be a finite str | None, got 3"),
    ({"sizes": [1, "2"]}, "_Typed.sizes must be a finite tuple\\[int, ...\\], got \\(1, '2'\\)"),
    ({"sizes": 3}, "_Typed.sizes must be a finite tuple"),
    ({"pair": [1, 2]}, "_Typed.pair must be a finite tuple\\[int, str\\]"),
    ({"pair": [1]}, "_Typed.pair must be a finite tuple\\[int, str\\]"),
    ({"names": ["en", 5]}, "_Typed.names must be a finite list\\[str\\]"),
    ({"inner": {"width": 4}}, "_Typed.inner must be a finite _Inner"),
])
def test_validation_follows_the_annotations(changes, message):
    with pytest.raises(ConfigError, match=message):
        _Typed.from_dict(changes)


def test_valid_typed_values_load_and_round_trip():
    config = _Typed(maybe=3, ratio=1, label="l", sizes=(4, 5, 6), pair=(2, "b"), names=["en"], inner=_Inner(8))
    config.validate()
    data = json.loads(json.dumps(config.to_dict()))  # JSON turns tuples into lists
    data["inner"] = _Inner.from_dict(data["inner"])  # a nested config is its owner's to read (PaliConfig's towers)
    again = _Typed.from_dict(data)
    assert again == config and isinstance(again.sizes, tuple)
    assert _Typed.from_dict({"maybe": None}).maybe is None
