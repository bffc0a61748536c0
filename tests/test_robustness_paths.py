"""Names inside a checkpoint cannot make a reader open a file outside the checkpoint directory.

Extends the zarr cases of tests/test_convert_t5x.py (``..``, absolute, symlinked arrays and
chunks) to index shard names (safetensors and ``.bin``, for loading and for conversion), npz
subtree selectors, zarr names with NUL bytes or URLs, and symlinked files in a local folder. The
rule (docs/reliability.md): names are plain relative paths without ``..``; files must resolve
inside the checkpoint directory, except that a Hugging Face cache snapshot's files may resolve
into that repo's ``blobs/`` (every file there is such a link).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from pali.testing.hf_reference import hf_mt5
from pali.testing.t5x import spec, t5x_names, write_t5x

from pali import CheckpointError, PaliModel
from pali.testing.checkpoints import read_safetensors
from pali.io import INDEX_NAME
from pali.convert import read_big_vision, read_hf, read_t5x
from pali.config.presets import get_config
from pali.models.text.mt5 import MT5

ESCAPES = ["../secret.safetensors", "/etc/passwd", "sub/../../x", "a/b.safetensors", "..", "x\0y"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    return PaliModel.from_preset("pali-tiny").save_pretrained(tmp_path_factory.mktemp("m") / "m",
                                                              max_shard_size="100KB")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _point_index_at(folder: Path, index: str, shard: str) -> None:
    data = json.loads((folder / index).read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = shard
    (folder / index).write_text(json.dumps(data))


@pytest.mark.parametrize("shard", ESCAPES)
def test_safetensors_index_names_are_refused(saved, tmp_path, shard):
    folder = _copy(saved, tmp_path / "m")
    shutil.copy(sorted(folder.glob("*.safetensors"))[0], tmp_path / "secret.safetensors")
    _point_index_at(folder, INDEX_NAME, shard)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        PaliModel.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        list(read_safetensors(folder))


@pytest.fixture(scope="module")
def hf_bin(tmp_path_factory):
    model = hf_mt5()
    folder = tmp_path_factory.mktemp("hf") / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    torch.save({k: state[k] for k in names[: len(names) // 2]}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in names[len(names) // 2:]}, folder / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 + (i >= len(names) // 2)}-of-00002.bin" for i, k in enumerate(names)}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_sharded_bin_reads(hf_bin):
    assert read_hf(hf_bin).config.d_model == hf_mt5().config.d_model


@pytest.mark.parametrize("shard", ["../pytorch_model.bin", "/tmp/pytorch_model.bin", "a/pytorch_model.bin"])
def test_bin_index_names_are_refused(hf_bin, tmp_path, shard):
    folder = _copy(hf_bin, tmp_path / "hf")
    shutil.copy(folder / "pytorch_model-00001-of-00002.bin", tmp_path / "pytorch_model.bin")
    _point_index_at(folder, "pytorch_model.bin.index.json", shard)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        read_hf(folder)


def test_corrupt_index_files(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    for text, match in [("[", "not valid JSON"), ("[1]", "no weight_map"), ('{"weight_map": [1]}', "no weight_map"),
                        ("[" * 100_000, "RecursionError"), ('{"weight_map": {"a": ' + "9" * 5000 + "}}", "not valid JSON")]:
        (folder / INDEX_NAME).write_text(text)
        with pytest.raises(CheckpointError, match=match):
            PaliModel.from_pretrained(folder)


def test_symlinked_shard_leading_out_of_a_local_folder_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    shard = sorted(folder.glob("*.safetensors"))[0]
    outside = tmp_path / "elsewhere.safetensors"
    shard.rename(outside)
    os.symlink(outside, shard)
    with pytest.raises(CheckpointError, match="is a link to .* outside the checkpoint directory"):
        PaliModel.from_pretrained(folder)


def test_symlinks_inside_the_folder_and_a_linked_folder_are_fine(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    shard = sorted(folder.glob("*.safetensors"))[0]
    (folder / "store").mkdir()
    shard.rename(folder / "store" / shard.name)
    os.symlink(Path("store") / shard.name, shard)
    os.symlink(folder, tmp_path / "linked")  # the whole folder elsewhere: the user's choice
    for path in (folder, tmp_path / "linked"):
        assert PaliModel.from_pretrained(path).num_parameters() > 0


def test_hub_cache_layout_may_link_into_blobs(saved, tmp_path):
    repo = tmp_path / "models--org--name"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in saved.iterdir():
        shutil.copy(file, repo / "blobs" / f"sha-{file.name}")
        os.symlink(Path("../../blobs") / f"sha-{file.name}", snapshot / file.name)
    assert PaliModel.from_pretrained(snapshot).num_parameters() > 0
    outside = tmp_path / "other.safetensors"
    shard = sorted(snapshot.glob("*.safetensors"))[0]
    shutil.copy(shard, outside)
    shard.unlink()
    os.symlink(outside, shard)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        PaliModel.from_pretrained(snapshot)


def test_symlinked_config_leading_out_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path / "m")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    os.symlink(tmp_path / "config.json", folder / "config.json")
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        PaliModel.from_pretrained(folder)


@pytest.mark.parametrize("selector", ["../x", "/etc", "img/../../x", ""])
def test_npz_selectors_never_reach_files(tmp_path, selector):
    """A selector names a subtree inside the archive: it is matched against member names only."""
    path = tmp_path / "x.npz"
    np.savez(path, **{"img/embedding/kernel": np.zeros((2, 2, 3, 4), np.float32)})
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError):
        read_big_vision(f"{path}:{selector}")


def _t5x_with_path(tmp_path: Path, kvstore: dict) -> Path:
    torch.manual_seed(0)
    directory = write_t5x(tmp_path / "checkpoint_1", t5x_names(MT5(get_config("mt5-tiny")).state_dict()))
    tree = msgpack.unpackb((directory / "checkpoint").read_bytes(), strict_map_key=False)
    tree["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"] = {**spec("x"), "kvstore": kvstore}
    (directory / "checkpoint").write_bytes(msgpack.packb(tree, use_bin_type=True))
    return directory


@pytest.mark.parametrize("kvstore, match", [
    ({"driver": "file", "path": "a\0b"}, "escapes"),
    ({"driver": "file", "path": "file:///etc"}, "escapes"),
    ({"driver": "gcs", "bucket": "b", "path": "x"}, "only local files"),
    ({"driver": "file", "path": "x" * 5000}, "escapes"),
    ({"driver": "file", "path": ["a"]}, "unsupported TensorStore spec"),
])
def test_zarr_paths_beyond_dotdot(tmp_path, kvstore, match):
    with pytest.raises(CheckpointError, match=match):
        read_t5x(_t5x_with_path(tmp_path, kvstore)).state_dict()


def test_zarr_symlink_loop(tmp_path):
    directory = _t5x_with_path(tmp_path, {"driver": "file", "path": "loop"})
    os.symlink("loop", directory / "loop")
    with pytest.raises(CheckpointError):
        read_t5x(directory).state_dict()
