"""BLIP-2 / InstructBLIP through PaliModel: parity with transformers, conversion, named errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from blip2_reference import (
    batch, hf_blip2, hf_inputs, pali_twin, qformer_batch, write_bin_layout,
    write_safetensors_layout,
)
from pali import CheckpointError, InputError, PaliConfig, PaliModel, get_config
from pali.convert import convert, hf, read

ATOL = 1e-4


@pytest.fixture(scope="module", params=[("t5", False), ("mt5", False), ("t5", True)], ids=["blip2-t5", "blip2-mt5", "instructblip"])
def pair(request):
    kind, instruct = request.param
    ref = hf_blip2(kind, instruct=instruct)
    return ref, pali_twin(ref), instruct


def _qformer(instruct, n):
    return qformer_batch(n) if instruct else None


def _ours_kwargs(qformer):
    return {} if qformer is None else dict(qformer_input_ids=qformer[0], qformer_attention_mask=qformer[1])


def test_logits_match_transformers(pair):
    ref, ours, instruct = pair
    px, ids, mask = batch(2)
    qformer = _qformer(instruct, 2)
    dec = torch.randint(0, 120, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(**hf_inputs(px, ids, mask, qformer), decoder_input_ids=dec).logits
        got = ours(px, ids, mask, decoder_input_ids=dec, **_ours_kwargs(qformer)).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_transformers(pair, num_beams):
    ref, ours, instruct = pair
    px, ids, mask = batch(3)
    qformer = _qformer(instruct, 3)
    for eos in (1, 5):
        with torch.no_grad():
            expected = ref.generate(**hf_inputs(px, ids, mask, qformer), max_new_tokens=8, num_beams=num_beams,
                                    do_sample=False, eos_token_id=eos, decoder_start_token_id=0,
                                    pad_token_id=0)[:, 1:]
        got = ours.generate(px, ids, mask, max_new_tokens=8, num_beams=num_beams, eos_token_id=eos,
                            **_ours_kwargs(qformer))
        assert torch.equal(got, expected), (eos, got, expected)


def test_qformer_ids_without_instructblip_raise():
    ours = pali_twin(hf_blip2("t5"))
    px, ids, mask = batch(2)
    qids, qmask = qformer_batch(2)
    with pytest.raises(InputError, match="only an InstructBLIP Q-Former"):
        ours.generate(px, ids, mask, qformer_input_ids=qids, max_new_tokens=2)
    paper = PaliModel.from_preset("pali-tiny")
    with pytest.raises(InputError, match=r"connector \(linear\) reads no instruction"):
        paper(torch.zeros(1, 3, 32, 32), torch.ones(1, 3, dtype=torch.long), decoder_input_ids=torch.zeros(1, 2, dtype=torch.long),
              qformer_input_ids=qids[:1])


def test_instruction_ids_change_the_answer_and_padding_is_masked():
    ours = pali_twin(hf_blip2("t5", instruct=True))
    px, ids, mask = batch(1)
    qids, _ = qformer_batch(1)
    plain = ours.encode(px, ids, mask, qids)[0]
    other = ours.encode(px, ids, mask, (qids + 1) % 100)[0]
    assert not torch.allclose(plain, other)
    padded = torch.cat([qids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    pad_mask = torch.cat([torch.ones_like(qids), torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(ours.encode(px, ids, mask, padded, pad_mask)[0], plain, atol=1e-5, rtol=0)


def test_paper_presets_unchanged_by_connectors():
    """The linear connector keeps PaLI's names, counts and old configs (no ``connector`` entry)."""
    with torch.device("meta"):
        model = PaliModel.from_preset("pali-3b")
    names = [n for n in model.state_dict() if n.startswith("projection.")]
    assert names == ["projection.weight", "projection.bias"]
    towers = sum(p.numel() for p in [*model.vision.parameters(), *model.text.parameters()])
    assert model.num_parameters() - towers == 1664 * 1024 + 1024  # ViT-G/14 width -> mT5-Large width, + bias
    old = get_config("pali-tiny").to_dict()
    old.pop("connector")
    assert PaliConfig.from_dict(old).connector.kind == "linear"


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_convert_hub_layouts(tmp_path, layout):
    ref = hf_blip2("mt5")
    write = write_safetensors_layout if layout == "safetensors" else write_bin_layout
    src = write(ref, tmp_path / "src")
    conversion = read(src)
    assert conversion.tower == "model" and conversion.config.connector.kind == "qformer"
    out = convert(src, tmp_path / "out", verify=True)
    assert out.config.num_visual_tokens == 4
    got = PaliModel.from_pretrained(tmp_path / "out").eval()
    if layout == "bin":  # mixed fp16/fp32 shards load as float32, the fp16 text weights upcast exactly
        assert got.text.lm_head.weight.dtype == torch.float32
        torch.testing.assert_close(got.text.lm_head.weight, ref.language_model.lm_head.weight.half().float(), atol=0, rtol=0)
    else:
        torch.testing.assert_close(got.text.lm_head.weight, ref.language_model.lm_head.weight, atol=0, rtol=0)
        px, ids, mask = batch(2)
        with torch.no_grad():
            expected = ref(**hf_inputs(px, ids, mask), decoder_input_ids=ids[:, :3]).logits
        torch.testing.assert_close(got(px, ids, mask, decoder_input_ids=ids[:, :3]).logits, expected, atol=ATOL, rtol=0)


def test_decoder_only_text_model_refused_before_reading_weights(tmp_path):
    src = write_safetensors_layout(hf_blip2("t5"), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["text_config"] = {"model_type": "opt", "hidden_size": 24}
    (src / "config.json").write_text(json.dumps(config))
    for shard in src.glob("*.safetensors"):
        shard.write_bytes(b"not weights")  # any read would fail differently
    with pytest.raises(CheckpointError, match="'opt', a decoder-only.*t5 or mt5"):
        read(src)


def test_missing_qformer_weights_and_shape_mismatch_named(tmp_path):
    ref = hf_blip2("t5")
    src = write_safetensors_layout(ref, tmp_path / "src", shards=1)

    shard = next(src.glob("*.safetensors"))
    tensors = load_file(str(shard))
    dropped = {k: v for k, v in tensors.items() if not k.startswith("qformer.encoder.layer.1.")}
    save_file(dropped, str(shard))
    with pytest.raises(CheckpointError, match=r"missing tensors \[.*projection\.layers\.1\."):
        read(src)
    tensors["query_tokens"] = torch.zeros(1, 5, 32)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"projection\.query_tokens.*\[1, 5, 32\].*\[1, 4, 32\]"):
        read(src)


# What transformers' own save_pretrained writes for the text models a BLIP-2 may hold. transformers 5
# ties every T5/mT5 head in memory (then leaves it out of the files) and writes
# ``tie_word_embeddings: true`` whatever the weights; T5Config's defaults are the original T5
# (ReLU feed-forward, head tied, decoder output scaled by d_model ** -0.5).
SAVED_BY_TRANSFORMERS = {
    "flan-t5, untied head": dict(kind="t5"),
    "flan-t5 flags, tied in memory": dict(kind="t5", untied=False),
    "t5 gated, tied and scaled": dict(kind="t5", untied=False, tie_word_embeddings=None),
    "original t5 (relu, tied, scaled)": dict(kind="t5", untied=False, tie_word_embeddings=None, feed_forward_proj=None),
    "mt5, tied in memory": dict(kind="mt5", untied=False),
}


@pytest.mark.parametrize("case", SAVED_BY_TRANSFORMERS)
def test_transformers_save_pretrained_loads_with_its_head(case, tmp_path):
    fields = dict(SAVED_BY_TRANSFORMERS[case])
    ref = hf_blip2(fields.pop("kind"), **fields)
    ref.save_pretrained(tmp_path / "src")
    ours = PaliModel.from_pretrained(tmp_path / "src", cache_dir=tmp_path / "cache").eval()
    head, embed = ours.text.lm_head.weight, ours.text.embed.weight
    lm = ref.language_model
    tied, scaled = lm.lm_head.weight is lm.shared.weight, bool(getattr(lm.config, "scale_decoder_outputs", False))
    assert torch.equal(head, embed * (24**-0.5 if scaled else 1.0)) == tied  # kept untied where it was
    px, ids, mask = batch(2)
    dec = torch.randint(0, 120, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(**hf_inputs(px, ids, mask), decoder_input_ids=dec).logits
        got = ours(px, ids, mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        want = ref.generate(**hf_inputs(px, ids, mask), max_new_tokens=6, do_sample=False, num_beams=1,
                            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)[:, 1:]
    assert torch.equal(ours.generate(px, ids, mask, max_new_tokens=6), want)


def test_missing_head_of_an_untied_config_is_named(tmp_path):
    """A config that says the head is untied but files without one: a missing tensor, not a tie."""
    ref = hf_blip2("t5")
    src = write_safetensors_layout(ref, tmp_path / "src", shards=1)
    shard = next(src.glob("*.safetensors"))
    tensors = load_file(shard)
    del tensors["language_model.lm_head.weight"]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    del index["weight_map"]["language_model.lm_head.weight"]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensors \['text\.lm_head\.weight'\]"):
        read(src)


@pytest.mark.parametrize(
    "text, version, tied, scaled",
    [
        ({"model_type": "t5", "tie_word_embeddings": False}, "4.31.0", False, False),  # Flan-T5 on the Hub
        ({"model_type": "mt5", "tie_word_embeddings": False}, "4.31.0", False, False),  # mT0 / mBLIP
        ({"model_type": "t5"}, "4.31.0", True, True),  # T5Config's old default: the original T5
        ({"model_type": "mt5"}, None, False, False),
        ({"model_type": "t5", "tie_word_embeddings": True, "scale_decoder_outputs": False}, "5.24.0", True, False),
        ({"model_type": "t5", "tie_word_embeddings": True, "scale_decoder_outputs": True}, "5.24.0", True, True),
        ({"model_type": "mt5", "tie_word_embeddings": True}, "5.24.0", True, False),  # mT5 never scales in 5
    ],
)
def test_head_tying_and_scaling_in_every_config_dialect(text, version, tied, scaled):
    text = {**text, "d_model": 16}
    assert hf.head_tied(text, version) == tied
    assert hf.decoder_output_scale(text, version) == (0.25 if scaled else None)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_finite(dtype):
    ours = pali_twin(hf_blip2("t5")).to(dtype)
    px, ids, mask = batch(2)
    with torch.no_grad():
        tokens = ours.generate(px.to(dtype), ids, mask, max_new_tokens=4)
        logits = ours(px.to(dtype), ids, mask, decoder_input_ids=tokens).logits
    assert torch.isfinite(logits).all()


def test_placeholder_ids_made_for_transformers_are_named():
    ours = pali_twin(hf_blip2("t5"))
    px, ids, mask = batch(2)
    made_for_transformers = hf_inputs(px, ids, mask)
    with pytest.raises(InputError, match="<image> placeholder id 127.*prompt's ids alone"):
        ours.generate(**made_for_transformers, max_new_tokens=2)
    assert ours.generate(px, ids, mask, max_new_tokens=2).shape[0] == 2
