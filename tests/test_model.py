"""PaliModel: structure, parameter counts, training signal, dtypes and input checking."""

import pytest
import torch

import pali
from pali import InputError, PaliModel, get_config
from pali.config.registry import PRESETS


def vit_params(width, depth, mlp, patch=14, tokens=256):
    """Count from the architecture table: patch conv + pos emb + blocks + final norm."""
    block = 2 * 2 * width + 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    return (patch * patch * 3 * width + width) + tokens * width + depth * block + 2 * width


def mt5_params(d, ff, heads, layers, vocab=250112, d_kv=64):
    inner = heads * d_kv
    attn = 4 * d * inner
    mlp = 3 * d * ff
    enc_layer = attn + mlp + 2 * d
    dec_layer = 2 * attn + mlp + 3 * d
    bias_tables = 2 * heads * 32
    return 2 * vocab * d + layers * (enc_layer + dec_layer) + bias_tables + 2 * d


@pytest.mark.parametrize(
    "name, vision, text, paper",
    [
        ("pali-3b", (1664, 48, 8192), (1024, 2816, 16, 24), 3e9),
        ("pali-15b", (1664, 48, 8192), (4096, 10240, 64, 24), 15e9),
        ("pali-17b", (1792, 56, 15360), (4096, 10240, 64, 24), 17e9),
    ],
)
def test_paper_sizes_parameter_counts(name, vision, text, paper):
    with torch.device("meta"):
        model = PaliModel.from_preset(name)
    expected = vit_params(*vision) + (vision[0] * text[0] + text[0]) + mt5_params(*text)
    count = model.num_parameters()
    print(f"{name}: {count:,} parameters")
    assert count == expected
    assert abs(count - paper) / paper < 0.05
    assert next(model.parameters()).is_meta


def test_tower_counts_match_published_figures():
    with torch.device("meta"):
        assert PaliModel.from_preset("pali-3b").text.__class__(get_config("mt5-large")).lm_head.weight.is_meta
    assert vit_params(1664, 48, 8192) == 1_842_772_352  # ViT-G/14 (DESIGN.md)
    assert vit_params(1792, 56, 15360) == 3_805_417_728  # ViT-e/14
    assert mt5_params(1024, 2816, 16, 24) == 1_229_581_312  # google/mt5-large on the Hub
    assert mt5_params(512, 1024, 6, 8) == 300_176_768  # google/mt5-small


def test_meta_build_then_materialize_on_device_and_dtype():
    with torch.device("meta"):
        model = PaliModel.from_preset("pali-tiny")
    model.to_empty(device="cpu").init_weights().to(torch.bfloat16)
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())
    assert model.text.encoder.norm.weight.float().eq(1).all()


def _small_presets():
    for name in PRESETS.names():
        if PRESETS.get(name).family == "pali":
            with torch.device("meta"):
                if PaliModel.from_preset(name).num_parameters() < 5_000_000:
                    yield name


@pytest.mark.parametrize("name", list(_small_presets()))
def test_small_presets_train(name):
    torch.manual_seed(0)
    model = PaliModel.from_preset(name).train()
    size = model.config.vision.image_size
    vocab = model.config.text.vocab_size
    out = model(
        torch.randn(2, 3, size, size),
        torch.randint(2, vocab, (2, 5)),
        attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        labels=torch.tensor([[7, 8, 9, 1], [10, 1, -100, -100]]),
    )
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_freeze_vision():
    model = PaliModel.from_preset("pali-tiny").freeze_vision()
    out = model(torch.randn(1, 3, 32, 32), torch.randint(2, 256, (1, 4)), labels=torch.tensor([[5, 1]]))
    out.loss.backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert model.projection.weight.grad is not None
    assert model.num_parameters(trainable_only=True) == model.num_parameters() - sum(
        p.numel() for p in model.vision.parameters()
    )
    model.freeze_vision(False)
    assert all(p.requires_grad for p in model.vision.parameters())


def test_loss_ignores_prompt_and_padding_labels():
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    px, ids = torch.randn(1, 3, 32, 32), torch.randint(2, 256, (1, 4))
    labels = torch.tensor([[7, 8, 1, -100, -100]])
    full = model(px, ids, labels=labels)
    logp = torch.log_softmax(full.logits.float(), -1)[0]
    manual = -(logp[0, 7] + logp[1, 8] + logp[2, 1]) / 3
    assert torch.allclose(full.loss, manual, atol=1e-6)
    # Decoder inputs are the labels shifted right with the start token, -100 fed as padding.
    explicit = model(px, ids, decoder_input_ids=torch.tensor([[0, 7, 8, 1, 0]]), labels=labels)
    assert torch.equal(full.logits, explicit.logits)


def test_text_only_input():
    model = PaliModel.from_preset("pali-tiny").eval()
    out = model(input_ids=torch.randint(2, 256, (2, 6)), labels=torch.tensor([[5, 1], [6, 1]]))
    assert out.logits.shape == (2, 2, 256) and torch.isfinite(out.loss)
    assert model.generate(input_ids=torch.randint(2, 256, (2, 6)), max_new_tokens=3).shape[0] == 2


def test_visual_tokens_are_attended_and_prompt_padding_is_masked():
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    px, ids = torch.randn(1, 3, 32, 32), torch.randint(2, 256, (1, 4))
    labels = torch.tensor([[5, 6, 1]])
    base = model(px, ids, labels=labels).logits
    other_image = model(torch.randn(1, 3, 32, 32), ids, labels=labels).logits
    assert not torch.allclose(base, other_image)
    padded_ids = torch.cat([ids, torch.randint(2, 256, (1, 3))], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    padded = model(px, padded_ids, attention_mask=mask, labels=labels).logits
    assert torch.allclose(base, padded, atol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_backends_agree(backend):
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(2, 256, (2, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]])
    labels = torch.tensor([[5, 6, 1], [7, 1, -100]])
    ref = model.set_attention_backend("eager")(px, ids, mask, labels=labels).logits
    out = model.set_attention_backend(backend)(px, ids, mask, labels=labels).logits
    assert (out - ref).abs().max() < 1e-5
    with pytest.raises(pali.ConfigError, match="flash9"):
        model.set_attention_backend("flash9")


def test_bfloat16_close_to_float32():
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    px, ids, labels = torch.randn(2, 3, 32, 32), torch.randint(2, 256, (2, 6)), torch.tensor([[5, 6, 1]] * 2)
    ref = model(px, ids, labels=labels)
    out = model.to(torch.bfloat16)(px, ids, labels=labels)
    assert out.logits.dtype == torch.bfloat16
    assert abs(out.loss.item() - ref.loss.item()) < 0.05


def test_float16_survives_t5_overflow():
    """Weights that push mT5's MLP output past 65504: naive fp16 overflows, the guarded path does not."""
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    with torch.no_grad():
        for layer in model.text.encoder.layers:
            layer.mlp.wo.weight.mul_(40000.0)
    px, ids, labels = torch.randn(2, 3, 32, 32), torch.randint(2, 256, (2, 6)), torch.tensor([[5, 6, 1]] * 2)
    peaks = []
    hook = model.text.encoder.layers[0].mlp.register_forward_hook(lambda m, i, o: peaks.append(o.abs().max().item()))
    model(px, ids, labels=labels)
    hook.remove()
    assert peaks[0] > 65504, "the input must overflow naive fp16"
    model.half()
    mlp_out = []
    hook = model.text.encoder.layers[0].mlp.register_forward_hook(lambda m, i, o: mlp_out.append(o))
    out = model(px.half(), ids, labels=labels)
    hook.remove()
    assert mlp_out[0].dtype == torch.float16 and torch.isfinite(mlp_out[0]).all()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert model.generate(px.half(), ids, max_new_tokens=4).shape[0] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pixel_values=torch.randn(1, 3, 64, 64)), "image_size is 32"),
        (dict(pixel_values=torch.randn(1, 1, 32, 32)), r"\[B, 3, 32, 32\]"),
        (dict(pixel_values=torch.randn(3, 32, 32)), r"\[B, 3, 32, 32\]"),
        (dict(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), "float"),
        (dict(pixel_values=torch.randn(0, 3, 32, 32), input_ids=torch.zeros(0, 3, dtype=torch.long)), "empty batch"),
        (dict(pixel_values=torch.randn(2, 3, 32, 32), input_ids=torch.ones(3, 4, dtype=torch.long)), "batch sizes differ"),
        (dict(input_ids=torch.full((1, 3), 999)), "outside"),
        (dict(input_ids=torch.ones(1, 3)), "integer"),
        (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4)), "attention_mask"),
        (dict(), "pixel_values, input_ids or both"),
        (dict(pixel_values=torch.full((1, 3, 32, 32), float("nan"))), "NaN"),
        (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.full((1, 3), 0.5)), "0/1"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    model = PaliModel.from_preset("pali-tiny")
    with pytest.raises(InputError, match=message):
        model(**kwargs, labels=torch.tensor([[1]]))


def test_out_of_vocabulary_labels_are_named():
    model = PaliModel.from_preset("pali-tiny")
    with pytest.raises(InputError, match="labels must be ids"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long), labels=torch.tensor([[5, 999]]))


def test_bad_generation_arguments():
    model = PaliModel.from_preset("pali-tiny")
    ids = torch.ones(1, 3, dtype=torch.long)
    for kwargs, message in [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_beams=0), "num_beams"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, top_p=1.5), "top_p"),
        (dict(do_sample=True, num_beams=2), "beam sampling"),
    ]:
        with pytest.raises(InputError, match=message):
            model.generate(input_ids=ids, **kwargs)


def test_score_is_forwards_loss_per_pair():
    """score()[b, c] == -loss * tokens of forward(input b, labels=candidate c), for every pair,
    with padded prompts and candidates of different lengths, chunked or not."""
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    size = model.config.vision.image_size
    pixels = torch.randn(2, 3, size, size)
    input_ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    targets = torch.tensor([[11, 12, 1, -100], [13, 1, -100, -100], [14, 15, 16, 1]])
    with torch.no_grad():
        scores = model.score(pixels, input_ids, attention_mask, targets=targets)
        chunked = model.score(pixels, input_ids, attention_mask, targets=targets, batch_size=2)
        expected = torch.empty(2, 3)
        for b in range(2):
            for c in range(3):
                kept = targets[c][targets[c] != -100]
                out = model(pixels[b : b + 1], input_ids[b : b + 1], attention_mask[b : b + 1], labels=kept[None])
                expected[b, c] = -out.loss * len(kept)
    assert scores.shape == (2, 3) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, scores)


@pytest.mark.parametrize("targets, kwargs, message", [
    (torch.tensor([1, 2]), {}, r"\[candidates, T\]"),
    (torch.zeros(2, 3), {}, "integer ids"),
    (torch.tensor([[10**7]]), {}, "targets must be ids"),
    (torch.tensor([[1]]), {"batch_size": 0}, "batch_size"),
])
def test_score_bad_targets_are_named(targets, kwargs, message):
    model = PaliModel.from_preset("pali-tiny")
    with pytest.raises(InputError, match=message):
        model.score(input_ids=torch.tensor([[5, 1]]), targets=targets, **kwargs)


def test_rms_norm_at_inference_is_the_composite_bit_for_bit():
    from pali.models.text.mt5 import RMSNorm

    norm = RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    for rows in (1, 7, 300):
        x = torch.randn(2, rows, 64) * 5
        composite = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
        with torch.no_grad():
            assert torch.equal(norm(x), composite)
