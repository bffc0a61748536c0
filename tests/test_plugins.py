"""Plugins: a real distribution declaring ``pali.*`` entry points is built, pip-installed into a
private ``--target`` folder (the shared environment stays clean) and used from a subprocess that
has only that folder added to its path. Plus fast unit tests of the registry's plugin loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from pali.testing.spm import train_spm

from pali import registry
from pali.errors import RegistryError

TOY_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "pali-toy-plugin"
version = "0.1"

[tool.setuptools]
packages = ["pali_toy_plugin"]

[project.entry-points."pali.vision_encoders"]
toy-patches = "pali_toy_plugin.vision:ToyVision"

[project.entry-points."pali.text_stacks"]
toy-mt5 = "pali_toy_plugin.text"

[project.entry-points."pali.heads"]
shout = "pali_toy_plugin.heads:ShoutHead"
"""

TOY_VISION = '''
"""A patch-embedding-only vision encoder; the entry point names the class itself."""
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from pali import VisionConfig


@dataclass
class ToyVisionConfig(VisionConfig):
    kind = "toy-patches"
    patch_size: int = 8
    hidden_size: int = 16

    @property
    def width(self):
        return self.hidden_size

    @property
    def num_tokens(self):
        return (self.image_size // self.patch_size) ** 2


class ToyVision(nn.Module):
    config_class = ToyVisionConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(3 * config.patch_size**2, config.hidden_size)

    def forward(self, pixel_values):
        p = self.config.patch_size
        return self.proj(F.unfold(pixel_values, p, stride=p).transpose(1, 2))
'''

TOY_TEXT = '''
"""mT5 under another kind; the entry point names this module, whose import registers it."""
from dataclasses import dataclass

from pali.config.registry import TEXT_STACKS
from pali.models.text.mt5 import MT5, MT5Config


@dataclass
class ToyTextConfig(MT5Config):
    kind = "toy-mt5"


class ToyText(MT5):
    config_class = ToyTextConfig


TEXT_STACKS.register("toy-mt5", ToyText, origin=__name__)
'''

TOY_HEADS = '''
from pali.tasks.heads import Head
from pali.processing.prompts import caption_prompt


class ShoutHead(Head):
    name = "shout"

    def build_prompt(self, lang="en"):
        return caption_prompt(lang)

    def parse(self, output):
        return output.upper() + "!"
'''

CLASH_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "pali-clash-plugin"
version = "0.1"

[tool.setuptools]
py-modules = ["pali_clash_plugin"]

[project.entry-points."pali.heads"]
caption = "pali_clash_plugin:FakeCaption"
"""

CLASH_MODULE = """
class FakeCaption:
    name = "caption"
"""

USE_TOY = """
import sys
import numpy as np
import torch
import pali
from pali import PaliConfig, PaliModel, PaliProcessor, ProcessorConfig, Tokenizer, get_config

assert pali.list_vision_encoders() == ["toy-patches", "vit"], pali.list_vision_encoders()
assert pali.list_text_stacks() == ["mt5", "toy-mt5"], pali.list_text_stacks()
assert pali.list_heads() == ["caption", "classify", "detect", "ocr", "shout", "vqa"], pali.list_heads()

from pali_toy_plugin.text import ToyTextConfig
from pali_toy_plugin.vision import ToyVisionConfig

config = PaliConfig(vision=ToyVisionConfig(image_size=16), text=ToyTextConfig.from_dict(get_config("mt5-tiny").to_dict()))
again = PaliConfig.from_json(config.to_json())  # kinds resolve through the plugin registries
assert type(again.vision).__name__ == "ToyVisionConfig" and type(again.text).__name__ == "ToyTextConfig"
torch.manual_seed(0)
model = PaliModel(again).eval()
assert type(model.vision).__name__ == "ToyVision" and type(model.text).__name__ == "ToyText"
out = model(pixel_values=torch.zeros(2, 3, 16, 16), input_ids=torch.tensor([[5, 1], [6, 1]]), labels=torch.tensor([[7, 1], [8, 1]]))
assert out.logits.shape == (2, 2, 256) and torch.isfinite(out.loss)

processor = PaliProcessor(Tokenizer(sys.argv[1]), ProcessorConfig(image_size=16))
shouted = pali.pipeline(model, processor, max_new_tokens=4).run("shout", np.zeros((20, 20, 3), np.uint8))
assert shouted.endswith("!") and shouted == shouted.upper(), shouted
print("plugin OK")
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _pip_install(source: Path, target: Path) -> subprocess.Popen:
    """Build and install offline, without touching the running environment."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--no-index", "--disable-pip-version-check", "--target", str(target), str(source),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _python(code: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    toy = _write(root / "toy", {
        "pyproject.toml": TOY_PYPROJECT,
        "pali_toy_plugin/__init__.py": "",
        "pali_toy_plugin/vision.py": TOY_VISION,
        "pali_toy_plugin/text.py": TOY_TEXT,
        "pali_toy_plugin/heads.py": TOY_HEADS,
    })
    clash = _write(root / "clash", {"pyproject.toml": CLASH_PYPROJECT, "pali_clash_plugin.py": CLASH_MODULE})
    jobs = {name: _pip_install(src, root / f"site-{name}") for name, src in (("toy", toy), ("clash", clash))}
    for name, job in jobs.items():
        output, _ = job.communicate()
        assert job.returncode == 0, f"pip install of the {name} plugin failed:\n{output}"
    return root


@pytest.mark.slow
def test_installed_plugins_are_discovered_and_used(installed, tmp_path):
    assert list((installed / "site-toy").glob("pali_toy_plugin-0.1.dist-info/entry_points.txt"))
    spiece = train_spm(tmp_path)
    result = _python(USE_TOY, installed / "site-toy", str(spiece))
    assert result.returncode == 0, result.stderr
    assert "plugin OK" in result.stdout


@pytest.mark.slow
def test_plugin_taking_a_builtin_name_raises(installed):
    code = "import pali\ntry:\n    pali.list_heads()\nexcept pali.RegistryError as e:\n    print(e)\n"
    result = _python(code, installed / "site-clash")
    assert result.returncode == 0, result.stderr
    assert "head 'caption' is registered twice: by pali.tasks.heads.text and by plugin pali_clash_plugin:FakeCaption" in result.stdout


# -- the registry's loading rules, without installing anything -------------------------------------


@pytest.fixture
def fake_entry_points(monkeypatch):
    points: list[EntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in points if p.group == group])
    return points


def test_plugins_load_lazily_on_first_read(fake_entry_points):
    reg = registry.Registry("widget", "test.widgets")
    fake_entry_points.append(EntryPoint("ordered", "collections:OrderedDict", "test.widgets"))
    reg.register("builtin", dict)
    assert not reg._plugins_loaded
    assert reg.names() == ["builtin", "ordered"]
    from collections import OrderedDict

    assert reg.get("ordered") is OrderedDict


def test_object_plugin_clashing_with_builtin_raises(fake_entry_points):
    reg = registry.Registry("widget", "test.widgets")
    reg.register("ordered", dict)
    fake_entry_points.append(EntryPoint("ordered", "collections:OrderedDict", "test.widgets"))
    with pytest.raises(RegistryError, match="widget 'ordered' is registered twice: by pali and by plugin collections:OrderedDict"):
        reg.names()


def test_module_plugin_that_registered_itself_is_not_registered_twice(fake_entry_points):
    reg = registry.Registry("widget", "test.widgets")
    from collections import OrderedDict

    reg.register("ordered", OrderedDict, origin="collections")  # as the plugin's import would
    fake_entry_points.append(EntryPoint("ordered", "collections:OrderedDict", "test.widgets"))
    fake_entry_points.append(EntryPoint("json-module", "json", "test.widgets"))
    assert reg.names() == ["ordered"]


def test_broken_plugin_is_named(fake_entry_points):
    reg = registry.Registry("widget", "test.widgets")
    fake_entry_points.append(EntryPoint("broken", "pali_no_such_module_xyz:thing", "test.widgets"))
    with pytest.raises(RegistryError, match=r"widget plugin 'broken' \(pali_no_such_module_xyz:thing\) failed to load"):
        reg.get("anything")
