"""from_unimodal: a PaLI seeded from tiny transformers towers, local and on the Hub stand-in."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch

from pali.testing.hf_reference import hf_clip, hf_mt5, hf_siglip
from hub_fixtures import hub  # noqa: F401  (fixture)
from toy_tower import ToyTower, ToyTowerConfig, register
from pali import CheckpointError, ConfigError, PaliConfig, PaliModel, get_config
from pali.io import write_safetensors
from pali.hub import HubError, list_recipes
from pali.hub import cache as hub_cache
from pali.hub import unimodal
from pali.models.pali import shift_right

ATOL = 1e-5


def _save_hf(model, folder, *, bin_format: bool = False):
    """A transformers checkpoint folder: safetensors via save_pretrained, or a pytorch_model.bin."""
    if bin_format:
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    mt5 = hf_mt5(seed=0)
    siglip, clip = hf_siglip(seed=1), hf_clip(seed=2)
    dirs = {
        "mt5": _save_hf(mt5, root / "mt5"),
        "mt5_bin": _save_hf(mt5, root / "mt5_bin", bin_format=True),
        "siglip": _save_hf(siglip, root / "siglip"),
        "clip_bin": _save_hf(clip, root / "clip_bin", bin_format=True),
    }
    (dirs["mt5"] / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny mT5\n")
    return {"mt5": mt5, "siglip": siglip, "clip": clip, "dirs": dirs}


def _check_text(model: PaliModel, hf) -> None:
    torch.manual_seed(0)
    ids = torch.randint(2, 256, (2, 9))
    labels = torch.randint(2, 256, (2, 6))
    with torch.no_grad():
        ref = hf(input_ids=ids, labels=labels).logits
        ours = model(input_ids=ids, decoder_input_ids=shift_right(labels, 0, 0)).logits
    assert (ours - ref).abs().max().item() <= ATOL


def _check_vision(model: PaliModel, hf, kind: str) -> None:
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = hf(pixel_values=px).last_hidden_state
        ref = hidden if kind == "siglip" else getattr(hf, "vision_model", hf).post_layernorm(hidden[:, 1:])
        assert (model.vision(px) - ref).abs().max().item() <= ATOL


def test_saved_transformers_mt5_keeps_an_untied_head(towers):
    from safetensors import safe_open

    with safe_open(str(towers["dirs"]["mt5"] / "model.safetensors"), framework="pt") as f:
        head, shared = f.get_tensor("lm_head.weight"), f.get_tensor("shared.weight")
    assert not torch.equal(head, shared)


@pytest.mark.parametrize("text_dir,vision_dir,kind", [("mt5", "siglip", "siglip"), ("mt5_bin", "clip_bin", "clip")])
def test_seed_from_local_folders_matches_sources(towers, tmp_path, text_dir, vision_dir, kind):
    dirs = towers["dirs"]
    model = PaliModel.from_unimodal(vision=dirs[vision_dir], text=dirs[text_dir], cache_dir=tmp_path)
    assert model.config.vision.width == 32 and model.config.text.d_model == 32
    _check_text(model, towers["mt5"])
    _check_vision(model, towers[kind], kind)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert model.projection.weight.requires_grad and model.projection.weight.std() > 0
    assert [s["tower"] for s in model.weight_sources] == ["vision", "text"]
    assert {s["format"] for s in model.weight_sources} == {"hf"}
    with torch.no_grad():  # the whole model runs: image + prompt -> text
        model.generate(torch.randn(1, 3, 32, 32), torch.randint(2, 256, (1, 4)), max_new_tokens=3)


def test_safetensors_towers_are_read_in_place(towers, tmp_path):
    dirs = towers["dirs"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no conversion to announce
        model = PaliModel.from_unimodal(vision=dirs["siglip"], text=dirs["mt5"], cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing cached
    _check_text(model, towers["mt5"])
    _check_vision(model, towers["siglip"], "siglip")


def test_bin_conversion_is_cached_and_invalidated_by_edits(towers, tmp_path, monkeypatch):
    dirs = towers["dirs"]
    calls = []
    real = hub_cache.convert_source
    monkeypatch.setattr(hub_cache, "convert_source", lambda *a: (calls.append(a[0]), real(*a)))
    with pytest.warns(UserWarning, match="cannot be read in place"):
        first = PaliModel.from_unimodal(vision=dirs["clip_bin"], text=dirs["mt5_bin"], cache_dir=tmp_path)
    assert calls == ["vision", "text"]
    assert {e.record["tower"]: e.record["source"] for e in hub_cache.list_entries(tmp_path)} == {
        "vision": str(dirs["clip_bin"].resolve()), "text": str(dirs["mt5_bin"].resolve())}
    second = PaliModel.from_unimodal(vision=dirs["clip_bin"], text=dirs["mt5_bin"], cache_dir=tmp_path)
    assert calls == ["vision", "text"]  # nothing converted the second time
    assert torch.equal(first.text.lm_head.weight, second.text.lm_head.weight)
    config = dirs["clip_bin"] / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="cannot be read in place"):
        PaliModel.from_unimodal(vision=dirs["clip_bin"], text=dirs["mt5_bin"], cache_dir=tmp_path)
    assert calls == ["vision", "text", "vision"]


def test_recipes_from_hub_ids_at_tiny_scale(towers, hub, tmp_path, monkeypatch):  # noqa: F811
    dirs = towers["dirs"]
    recipe = list_recipes()["pali-3b"]
    assert (recipe.vision, recipe.text) == ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "google/mt5-large")
    assert list_recipes()["pali-15b"].text == "google/mt5-xxl" and list_recipes()["pali-17b"].vision is None
    hub.commit(recipe.vision, dirs["clip_bin"])
    hub.commit(recipe.text, dirs["mt5"])
    # The real recipe, with pali-tiny's shapes standing in for pali-3b's.
    monkeypatch.setitem(unimodal.RECIPES, "pali-tiny", unimodal.Recipe("pali-tiny", text=recipe.text, vision=recipe.vision))
    model = PaliModel.from_unimodal("pali-tiny", cache_dir=tmp_path)
    assert model.config.preset == "pali-tiny" and model.config.vision.class_token  # CLIP layout kept
    _check_text(model, towers["mt5"])
    _check_vision(model, towers["clip"], "clip")
    sources = {s["tower"]: s for s in model.weight_sources}
    assert sources["text"]["source"] == "google/mt5-large" and len(sources["text"]["revision"]) == 40
    assert sources["text"]["license"] == "apache-2.0"
    card = (model.save_pretrained(tmp_path / "seeded") / "README.md").read_text()
    assert "- google/mt5-large" in card and "- laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" in card
    # pali-17b's recipe: no public vision tower -> random init, said out loud.
    monkeypatch.setitem(unimodal.RECIPES, "pali-tiny", unimodal.Recipe("pali-tiny", text=recipe.text, vision=None,
                                                                       note="no public weights"))
    with pytest.warns(UserWarning, match="vision tower of pali-tiny is randomly initialised .no public weights"):
        model = PaliModel.from_unimodal("pali-tiny", cache_dir=tmp_path)
    _check_text(model, towers["mt5"])
    assert model.vision.pos_embed.std() > 0 and model.weight_sources[-1]["source"] == "random init"


def test_wrong_inputs_are_named(towers, hub, tmp_path):  # noqa: F811
    dirs = towers["dirs"]
    with pytest.raises(ConfigError, match=r"needs both towers; \['vision'\] not given"):
        PaliModel.from_unimodal(text=dirs["mt5"], cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="holds a text tower, not a vision tower"):
        PaliModel.from_unimodal(vision=dirs["mt5"], text=dirs["mt5"], cache_dir=tmp_path)
    wide = _save_hf(hf_mt5(seed=3, d_model=48), tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"shape of preset 'pali-tiny'.*d_model: 48 \(wanted 32\)"):
        PaliModel.from_unimodal("pali-tiny", vision=dirs["siglip"], text=wide, cache_dir=tmp_path)
    custom = PaliConfig(vision=get_config("vit-tiny"), text=get_config("mt5-tiny"))
    seeded = PaliModel.from_unimodal(custom, vision=dirs["siglip"], text=dirs["mt5"], cache_dir=tmp_path)
    _check_text(seeded, towers["mt5"])
    _check_vision(seeded, towers["siglip"], "siglip")
    with pytest.raises(HubError, match="'org/none' not found"):
        PaliModel.from_unimodal(vision="org/none", text=dirs["mt5"], cache_dir=tmp_path)
    hub.commit("org/configonly", _only_config(dirs["mt5"], tmp_path))
    with pytest.raises(CheckpointError, match="no PyTorch weights"):
        PaliModel.from_unimodal(vision=dirs["siglip"], text="org/configonly", cache_dir=tmp_path)


def _only_config(src, tmp_path):
    folder = tmp_path / "configonly"
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    return folder


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pali-pwned",))


def test_pickles_are_never_executed(towers, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((towers["dirs"]["mt5"] / "config.json").read_text())
    torch.save({"shared.weight": _Exploit()}, folder / "pytorch_model.bin", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        PaliModel.from_unimodal(vision=towers["dirs"]["siglip"], text=folder, cache_dir=tmp_path)
    assert not os.path.exists("/tmp/pali-pwned")


def test_sharded_transformers_tower_from_the_hub(towers, hub, tmp_path):  # noqa: F811
    sharded = tmp_path / "sharded"
    towers["mt5"].save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    hub.commit("org/sharded-mt5", sharded)
    model = PaliModel.from_unimodal(vision=towers["dirs"]["siglip"], text="org/sharded-mt5", cache_dir=tmp_path)
    _check_text(model, towers["mt5"])


# -- a plugin tower: its config names its shape fields ---------------------------------------------


def test_plugin_tower_declares_its_shape_fields(towers, tmp_path, monkeypatch):
    """from_unimodal compares a plugin tower on the fields its config names, nothing else."""
    register()
    torch.manual_seed(0)
    saved = ToyTower(ToyTowerConfig(init="zeros"))
    folder = tmp_path / "toy"
    folder.mkdir()
    write_safetensors(saved.state_dict().items(), folder)
    converted = unimodal.converted_tower

    def tower(role, source, **kwargs):
        if role == "text":
            return converted(role, source, **kwargs)
        return unimodal.Tower(role, folder, saved.config, {"source": "toy", "revision": None})

    monkeypatch.setattr(unimodal, "converted_tower", tower)
    base = PaliConfig(vision=ToyTowerConfig(), text=get_config("mt5-tiny"))
    model = PaliModel.from_unimodal(base, vision="toy", text=towers["dirs"]["mt5"], cache_dir=tmp_path)
    assert model.config.vision == saved.config  # the checkpoint's layout ("zeros") wins
    loaded, expected = model.vision.state_dict(), saved.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    _check_text(model, towers["mt5"])
    wide = PaliConfig(vision=ToyTowerConfig(hidden_size=24), text=get_config("mt5-tiny"))
    with pytest.raises(ConfigError, match=r"vision checkpoint toy does not have the shape of the given config's "
                                          r"vision tower: hidden_size: 16 \(wanted 24\)"):
        PaliModel.from_unimodal(wide, vision="toy", text=towers["dirs"]["mt5"], cache_dir=tmp_path)
