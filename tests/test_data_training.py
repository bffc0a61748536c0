"""Training data: examples from sources, the collator, streamed shards split across ranks and
workers (no example twice in an epoch), and the weighted task mixture (deterministic, resumable)."""

from __future__ import annotations

import io
import itertools
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from pali import PaliProcessor
from pali.data import Collator, ExampleDataset, ShardStream, SourceError, TaskMixture
from pali.defaults import IGNORE_INDEX
from pali.processing.prompts import PALI


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 7 % 256, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def write_shards(folder, shards: int, per_shard: int, prefix: str = "s") -> list[str]:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"{prefix}{s:03d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                n = s * per_shard + i
                sink.write({"__key__": f"{prefix}{n:04d}", "png": _png(n),
                            "json": {"caption": f"shape {n}", "question": f"which {n}?", "answer": f"a{n}"}})
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def processor():
    return PaliProcessor.from_pretrained("pali-demo")


def test_the_collator_words_each_task_and_pads_labels(tmp_path, processor):
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"image": "a.png", "caption": "a red square"}) + "\n"
        + json.dumps({"image": "a.png", "id": "2", "question": "what colour?", "answer": "red", "lang": "fr"}) + "\n"
    )
    captions = ExampleDataset(tmp_path / "m.jsonl", "caption")
    vqa = ExampleDataset(tmp_path / "m.jsonl", "vqa")
    with pytest.raises(Exception, match="no target / answer field"):
        vqa[0]
    batch = Collator(processor)([captions[0], vqa[1]])
    expected = processor(images=[captions[0]["image"]] * 2,
                         text=[PALI.caption_prompt("en"), PALI.vqa_prompt("what colour?", "fr")],
                         suffix=["a red square", "red"])
    for key in ("pixel_values", "input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], expected[key]), key
    short = len(processor.tokenizer.encode("red"))
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all() and (batch["labels"][1, :short] != IGNORE_INDEX).all()


def test_a_dataset_is_checked_row_by_row_before_training(tmp_path, processor):
    """``check`` names the first bad row by file and line, decoding no pixel: a missing target, a
    missing image file, a prompt the processor cannot encode (with a hint when the row chose it)."""
    from pali.errors import InputError

    (tmp_path / "a.png").write_bytes(_png(1))
    manifest = tmp_path / "m.jsonl"
    rows = [{"image": "a.png", "caption": "a red square"}, {"image": "a.png", "caption": "un carré", "lang": "fr"}]

    def write(*extra) -> ExampleDataset:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
        return ExampleDataset(manifest, "caption")

    data, collator = write(), Collator(processor)
    data.check(collator)  # one image, two captions: two examples
    assert [(data[i]["id"], data[i]["target"]) for i in range(2)] == [("a.png", "a red square"), ("a.png", "un carré")]
    assert [collator.prompt(data[i]) for i in range(2)] == [PALI.caption_prompt("en"), PALI.caption_prompt("fr")]
    with pytest.raises(SourceError, match=r"m.jsonl:3: image \S*gone.png not found"):
        write({"image": "gone.png", "caption": "x"}).check()
    with pytest.raises(InputError, match=r"m.jsonl:3: missing the caption target: no target / caption / text "
                                         r"field \(the row has: lang\)"):
        write({"image": "a.png", "lang": "en"}).check()

    class NoSentinels:  # a tokenizer without T5's <extra_id_N>, as some BLIP-2 checkpoints ship
        config = processor.config

        def __call__(self, text):
            if "<extra_id_" in text:
                raise InputError("no sentinels in this vocabulary")

    with pytest.raises(InputError, match=r"m.jsonl:1: prompt 'Generate the alt_text in en at 0: <extra_id_0>' does "
                                         r"not suit this pali model: no sentinels in this vocabulary$"):
        write().check(Collator(NoSentinels()))
    rows[:] = [{"image": "a.png", "caption": "x", "prompt": "caption <extra_id_0>"}]
    with pytest.raises(InputError, match=r"m.jsonl:1: prompt .* no sentinels in this vocabulary; leave \"prompt\" out "
                                         r"to use the model's own caption prompt"):
        write().check(Collator(NoSentinels()))


def _keys(dataset, workers: int) -> list[str]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    return [e["id"] for e in loader]


@pytest.mark.parametrize("shards, per_shard", [(4, 3), (1, 7)])  # by shard; fewer shards than readers: by sample
def test_shards_stream_once_per_epoch_across_workers(tmp_path, shards, per_shard):
    paths = write_shards(tmp_path, shards, per_shard)
    stream = ShardStream(paths, "caption", seed=3)
    keys = _keys(stream, workers=2)
    assert sorted(keys) == sorted(f"s{n:04d}" for n in range(shards * per_shard))
    assert _keys(stream, workers=2) == keys  # deterministic for a seed and epoch
    stream.set_epoch(1)
    assert sorted(_keys(stream, workers=0)) == sorted(keys)


def _rank(rank: int, init_file: str, paths: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        keys = {name: _keys(ShardStream(p, "vqa"), workers=2) for name, p in paths}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(keys, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_with_workers_read_every_example_once(tmp_path):
    paths = [("many", write_shards(tmp_path / "many", 8, 2, "m")), ("few", write_shards(tmp_path / "few", 2, 5, "f"))]
    out = tmp_path / "keys"
    mp.spawn(_rank, args=(str(tmp_path / "init"), paths, str(out)), nprocs=2, join=True)
    ranks = [json.loads(out.with_name(f"keys.{r}").read_text()) for r in range(2)]
    for name, expected in (("many", {f"m{n:04d}" for n in range(16)}), ("few", {f"f{n:04d}" for n in range(10)})):
        both = ranks[0][name] + ranks[1][name]
        assert len(both) == len(set(both)) == len(expected) and set(both) == expected, name
        assert ranks[0][name] and ranks[1][name]  # both ranks had work


def _mixture(tmp_path, seed=0, batch_size=1):
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    (tmp_path / "cap.jsonl").write_text("".join(json.dumps({"image": f"{i}.png", "caption": f"c{i}"}) + "\n"
                                                for i in range(6)))
    shards = write_shards(tmp_path / "vqa", 2, 4, "q")
    return TaskMixture([("captions", ExampleDataset(tmp_path / "cap.jsonl", "caption"), 3.0),
                        ("vqa", ShardStream(shards, "vqa"), 1.0)], seed=seed, batch_size=batch_size)


def _take(mixture, n, workers=0, batch_size=1):
    if workers == 0:
        return [(e["source"], e["id"]) for e in itertools.islice(mixture, n)]
    loader = torch.utils.data.DataLoader(mixture, batch_size=batch_size, num_workers=workers,
                                         collate_fn=lambda b: [(e["source"], e["id"]) for e in b])
    return list(itertools.chain.from_iterable(itertools.islice(loader, n // batch_size)))


def test_the_mixture_is_weighted_deterministic_and_resumable(tmp_path):
    mixture = _mixture(tmp_path, batch_size=2)
    first = _take(mixture, 40)
    assert first == _take(_mixture(tmp_path, batch_size=2), 40)
    assert first != _take(_mixture(tmp_path, seed=1), 40)
    assert _take(_mixture(tmp_path, batch_size=2), 40, workers=2, batch_size=2) == first  # workers: same stream
    captions = [i for s, i in first if s == "captions"]
    assert sorted(captions[:6]) == [f"{i}.png" for i in range(6)]  # an epoch of a component: each example once
    shares = mixture.shares(400)
    assert shares["captions"]["weight"] == 0.75
    assert abs(shares["captions"]["share"] - 0.75) < 0.07 and shares["captions"]["examples"] + shares["vqa"]["examples"] == 400
    assert mixture.shares(40)["captions"]["examples"] == len(captions)

    state = mixture.state_dict(20)
    resumed = _mixture(tmp_path, batch_size=2)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert _take(resumed, 20) == first[20:]
    with pytest.raises(Exception, match="another mixture"):
        _mixture(tmp_path, seed=5).load_state_dict(state)


def test_ranks_sample_disjoint_parts(tmp_path, monkeypatch):
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        mixture = _mixture(tmp_path)
        seen.append({i for s, i in _take(mixture, 60) if s == "captions"})
    assert len(seen[0]) == len(seen[1]) == 3 and not seen[0] & seen[1]


def test_bad_mixtures(tmp_path):
    data = ExampleDataset
    with pytest.raises(Exception, match="at least one"):
        TaskMixture([])
    (tmp_path / "a.png").write_bytes(_png(0))
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(Exception, match="weights must be > 0"):
        TaskMixture([("a", data(tmp_path / "m.jsonl", "caption"), 0)])
    with pytest.raises(Exception, match="unknown training task"):
        data(tmp_path / "m.jsonl", "classify")
    with pytest.raises(SourceError, match="no such shard"):
        ShardStream(tmp_path / "none.tar", "caption")


@pytest.mark.slow
def test_the_mixture_example_trains_saves_and_resumes(tmp_path, capsys, monkeypatch):
    import sys
    from pathlib import Path

    from pali import PaliModel

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    import finetune_mixture

    args = ["--out", str(tmp_path / "run"), "--batch-size", "4", "--synthetic", "16"]
    assert finetune_mixture.main([*args, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "captions:" in out and "of the stream (weight 67%)" in out
    state = json.loads((tmp_path / "run" / "final" / "mixture_state.json").read_text())
    assert state["step"] == 8
    PaliModel.from_pretrained(tmp_path / "run" / "final")
    assert finetune_mixture.main([*args, "--steps", "1", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "final" / "mixture_state.json").read_text())["step"] == 12
    capsys.readouterr()
    assert finetune_mixture.main([*args, "--captions", str(tmp_path / "none.tar")]) == 2
    assert capsys.readouterr().err.strip() == f"finetune_mixture: error: no such shard: {tmp_path / 'none.tar'}"
    assert sys.modules["finetune_mixture"] is finetune_mixture
