"""pali.data's sources: every input kind lists records with stable ids, bad input is a named error,
and an image that cannot be decoded is an UnreadableImage (batch inference makes it an error row)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pali.data import (
    Columns,
    SourceError,
    UnreadableImage,
    decode_image,
    open_source,
    part_of_world,
    read_shard_index,
)


def _png(color=(200, 30, 30), size=(24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _jpeg(size=(640, 480)) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "b.png").write_bytes(_png())
    (root / "sub" / "a.JPG").write_bytes(_jpeg((64, 48)))
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_lists_its_images_recursively_with_relative_ids(folder):
    source = open_source(folder)
    assert [r.id for r in source.records] == ["b.png", "sub/a.JPG"]
    assert source.image(1).size == (64, 48)


def test_a_glob_and_single_files(folder):
    source = open_source([str(folder / "**" / "*.JPG")])
    assert [r.id for r in source.records] == [str(folder / "sub" / "a.JPG")]
    with pytest.raises(SourceError, match="matches no file"):
        open_source(str(folder / "*.gif"))


def test_jsonl_manifest_paths_fields_and_renamed_columns(folder, tmp_path):
    manifest = folder / "m.jsonl"
    rows = [
        {"file": "b.png", "q": "what colour?", "labels": "cat, dog"},
        {"file": str(folder / "sub" / "a.JPG"), "key": "x1", "labels": ["sun"]},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    source = open_source(manifest, Columns(image="file", id="key", question="q"))
    assert [r.id for r in source.records] == ["b.png", "x1"]
    assert source.records[0].get("q") == "what colour?"
    assert source.records[0].get("labels") == ["cat", "dog"]
    assert source.image(0).size == (24, 16)


def test_csv_manifest(folder):
    (folder / "m.csv").write_text("image,question,id\nb.png,is it red?,r1\nsub/a.JPG,,r2\n")
    source = open_source(folder / "m.csv")
    assert [(r.id, r.get("question")) for r in source.records] == [("r1", "is it red?"), ("r2", "")]


@pytest.mark.parametrize("line, message", [
    ({"path": "b.png"}, "no 'image' column"),
    ({"image": "../outside.png"}, "escapes the manifest's folder"),
    ({"image": ""}, "must be a non-empty path"),
    ({"image": 3}, "must be a non-empty path"),
    ({"image": "sub"}, "is a folder"),
    ({"image": "b.png", "labels": 5}, "labels must be"),
])
def test_bad_manifest_rows_are_named_errors(folder, line, message):
    (folder.parent / "outside.png").write_bytes(_png())
    manifest = folder / "m.jsonl"
    manifest.write_text(json.dumps({"image": "b.png"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(SourceError, match=message) as e:
        open_source(manifest)
    assert f"{manifest}:2" in str(e.value)


def test_a_manifest_that_is_not_json_lines(folder):
    (folder / "m.jsonl").write_text('{"image": "b.png"}\n[1, 2]\n')
    with pytest.raises(SourceError, match="m.jsonl:2: a JSON object"):
        open_source(folder / "m.jsonl")
    (folder / "m.jsonl").write_text('{"image": "b.png"\n')
    with pytest.raises(SourceError, match="m.jsonl:1: not a JSON line"):
        open_source(folder / "m.jsonl")


def test_a_missing_image_is_an_unreadable_record_not_a_listing_error(folder):
    (folder / "m.jsonl").write_text(json.dumps({"image": "gone.png"}) + "\n")
    source = open_source(folder / "m.jsonl")
    with pytest.raises(UnreadableImage, match="no such image file"):
        source.image(0)


def test_duplicate_ids_and_empty_sources_are_errors(folder, tmp_path):
    (folder / "m.jsonl").write_text(json.dumps({"image": "b.png"}) + "\n" + json.dumps({"image": "b.png"}) + "\n")
    with pytest.raises(SourceError, match="id 'b.png' twice"):
        open_source(folder / "m.jsonl")
    repeated = open_source(folder / "m.jsonl", unique_ids=False)  # training data: two captions of one image
    assert [(r.id, r.where) for r in repeated] == [("b.png", f"{folder / 'm.jsonl'}:1"), ("b.png", f"{folder / 'm.jsonl'}:2")]
    (folder / "m.jsonl").write_text("\n")
    with pytest.raises(SourceError, match="m.jsonl: a manifest with no row in it"):
        open_source(folder / "m.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image in it"):
        open_source(tmp_path / "empty")
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nothing-here")
    with pytest.raises(SourceError, match="no input"):
        open_source([])


# -- shards ----------------------------------------------------------------------------------------


def write_shard(path, samples):
    """A webdataset shard written by webdataset's own TarWriter: our reader reads the real format."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def test_webdataset_shards_written_by_webdataset(tmp_path):
    png = _png()
    write_shard(tmp_path / "s0.tar", [
        {"__key__": "k0", "png": png, "json": {"caption": "a red box", "labels": ["box"]}},
        {"__key__": "dir/k1", "jpg": _jpeg((32, 32)), "txt": "hello"},
    ])
    records = read_shard_index(tmp_path / "s0.tar")
    assert [r.id for r in records] == ["k0", "dir/k1"]
    assert records[0].fields == {"caption": "a red box", "labels": ["box"]}
    assert records[1].fields == {"text": "hello"}
    source = open_source(tmp_path / "s0.tar")
    assert np.array_equal(np.array(source.image(0)), np.array(Image.open(io.BytesIO(png)).convert("RGB")))
    assert source.image(1).size == (32, 32)


def test_bad_shards_are_named_errors(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(SourceError, match="not a readable webdataset shard"):
        open_source(tmp_path / "junk.tar")
    write_shard(tmp_path / "ok.tar", [{"__key__": "k0", "png": _png(), "json": {"a": 1}}])
    data = (tmp_path / "ok.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:700])  # ends inside a member
    with pytest.raises(SourceError, match="cut.tar"):
        open_source(tmp_path / "cut.tar")
    write_shard(tmp_path / "noimage.tar", [{"__key__": "k0", "json": {"a": 1}}])
    with pytest.raises(SourceError, match="noimage.tar:k0: no image member"):
        open_source(tmp_path / "noimage.tar")
    write_shard(tmp_path / "badjson.tar", [{"__key__": "k0", "png": _png(), "json": b"{oops"}])
    with pytest.raises(SourceError, match=r"k0\.json: not JSON"):
        open_source(tmp_path / "badjson.tar")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(SourceError, match="no sample"):
        open_source(tmp_path / "empty.tar")


def test_a_shard_truncated_inside_an_image_makes_that_image_unreadable(tmp_path):
    write_shard(tmp_path / "s.tar", [{"__key__": "k0", "png": _png()}])
    source = open_source(tmp_path / "s.tar")
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "s.tar").write_bytes(data[: source.records[0].image.offset + 10])
    with pytest.raises(UnreadableImage, match="s.tar:k0"):
        source.image(0)


# -- Hugging Face datasets -------------------------------------------------------------------------


def test_a_dataset_saved_with_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("RGB", (20, 10), (i * 40, 0, 0)) for i in range(3)]
    data = datasets.Dataset.from_dict(
        {"image": images, "question": ["q0", "q1", "q2"]},
        features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")}),
    )
    data.save_to_disk(str(tmp_path / "ds"))
    source = open_source(tmp_path / "ds")
    assert [r.id for r in source.records] == ["0", "1", "2"]
    assert [r.get("question") for r in source.records] == ["q0", "q1", "q2"]
    assert np.array(source.image(2))[0, 0].tolist() == [80, 0, 0]
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SourceError, match="--split"):
        open_source(tmp_path / "dd")
    assert len(open_source(tmp_path / "dd", split="test")) == 3
    with pytest.raises(SourceError, match="no 'picture' column"):
        open_source(tmp_path / "ds", Columns(image="picture"))
    data.remove_columns(["question"]).save_to_disk(str(tmp_path / "images-only"))
    assert [r.id for r in open_source(tmp_path / "images-only").records] == ["0", "1", "2"]


# -- decoding --------------------------------------------------------------------------------------


def test_unreadable_images(tmp_path, monkeypatch):
    jpeg = _jpeg()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(UnreadableImage, match="cut.jpg: not a readable image"):
        decode_image(str(tmp_path / "cut.jpg"), "cut.jpg")
    with pytest.raises(UnreadableImage, match="junk.png: not a readable image"):
        decode_image(str(tmp_path / "junk.png"), "junk.png")
    with pytest.raises(UnreadableImage, match="no such image file"):
        decode_image(str(tmp_path / "gone.png"), "gone.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above this, refuses above twice it
    (tmp_path / "big.png").write_bytes(_png(size=(40, 40)))
    with pytest.raises(UnreadableImage, match="too large to decode safely"):
        decode_image(str(tmp_path / "big.png"), "big.png")


def test_odd_modes_become_rgb_and_jpegs_decode_reduced(tmp_path):
    grey = io.BytesIO()
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(grey, format="PNG")  # 16-bit grey
    grey.seek(0)
    assert decode_image(grey, "grey").mode == "RGB"
    image = decode_image(io.BytesIO(_jpeg((640, 480))), "big", size=64)
    assert image.info["original_size"] == (480, 640)
    assert image.size[0] < 640 and image.size[0] >= 128  # draft: at least twice the model's size


# -- sharding --------------------------------------------------------------------------------------


class _Parts(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield part_of_world()


def test_each_dataloader_worker_knows_its_part(folder, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = torch.utils.data.DataLoader(_Parts(), batch_size=None, num_workers=2)
    assert sorted(tuple(int(v) for v in p) for p in loader) == [(2, 4), (3, 4)]
    source = open_source(folder)
    assert [r.id for r in source.shard(1, 2).records] == ["sub/a.JPG"]
