"""pali.quantize: int8 / bf16 weights for the layers a decoding step reads, close to fp32; and the
decode step's CPU kernels (``pali.nn.gemv``) equal to ``F.linear``. Speed lives in
``benchmarks/decode_peers.py``."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pali
from pali import InputError, PaliModel
from pali.nn import gemv
from pali.nn.quantize import Bf16Linear, Int8Linear


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PaliModel.from_preset("pali-tiny").eval()


def _inputs():
    g = torch.Generator().manual_seed(3)
    px = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(2, 256, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    labels = torch.randint(2, 256, (2, 5), generator=g)
    return px, ids, mask, labels


@pytest.mark.parametrize(("fmt", "layer", "tolerance"), [("int8", Int8Linear, 0.05), ("bf16", Bf16Linear, 0.02)])
def test_quantize_converts_the_decoding_layers_and_stays_close(model, fmt, layer, tolerance):
    px, ids, mask, labels = _inputs()
    quantized = pali.quantize(copy.deepcopy(model), fmt)
    assert isinstance(quantized.text.lm_head, layer)
    assert not any(type(m) is nn.Linear for m in quantized.text.decoder.modules())
    with torch.no_grad():
        expected = model(px, ids, mask, labels=labels).logits
        got = quantized(px, ids, mask, labels=labels).logits
    assert got.dtype == expected.dtype
    error = float((got - expected).abs().max() / expected.abs().max())
    assert 0 < error <= tolerance, error
    out = quantized.generate(px, ids, mask, max_new_tokens=5, eos_token_id=-1)
    assert out.shape == (2, 5)


@pytest.mark.parametrize(("fmt", "bf16_cpu", "encoder", "converted"), [
    ("int8", True, None, True), ("int8", False, None, False), ("int8", True, False, False),
    ("bf16", False, None, True), ("int8", False, True, True),
])
def test_the_text_encoder_goes_bf16_where_the_cpu_multiplies_bf16(model, monkeypatch, fmt, bf16_cpu, encoder, converted):
    """The encoder runs once per generation over every prompt row: bf16 where the CPU has bf16
    instructions (int8 default), always for "bf16", never when told not to; the vision tower keeps
    its weights."""
    import pali.models.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "has_bf16_instructions", lambda: bf16_cpu)
    quantized = pali.quantize(copy.deepcopy(model), fmt, encoder=encoder)
    kinds = {type(m) for m in quantized.text.encoder.modules()}
    assert (Bf16Linear in kinds) == converted and (nn.Linear not in kinds) == converted
    assert not any(isinstance(m, (Bf16Linear, Int8Linear)) for m in quantized.vision.modules())
    px, ids, mask, labels = _inputs()
    with torch.no_grad():
        expected, got = model.encode(px, ids, mask)[0], quantized.encode(px, ids, mask)[0]
    assert got.dtype == expected.dtype == torch.float32  # the residual stream keeps the model's dtype
    assert torch.equal(got, expected) != converted
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)


def test_quantize_refuses_what_it_cannot_do(model):
    with pytest.raises(InputError, match="unknown weight format 'int4'"):
        pali.quantize(copy.deepcopy(model), "int4")
    twice = pali.quantize(copy.deepcopy(model), "int8")
    with pytest.raises(InputError, match="not quantized yet"):
        pali.quantize(twice, "int8")
    with pytest.raises(InputError, match="text decoder"):
        pali.quantize(nn.Linear(2, 2), "int8")
    no_encoder = copy.deepcopy(model)
    del no_encoder.text.encoder
    with pytest.raises(InputError, match="encoder=True, but MT5 has no text encoder"):
        pali.quantize(no_encoder, "int8", encoder=True)


@pytest.mark.parametrize("rows", [1, 3])
def test_decode_linear_equals_linear(rows, monkeypatch):
    """The output layer's kernels (a batched view for one row, ``W @ x.T`` for several) give
    ``F.linear``'s numbers up to fp32 rounding; small weights are ``F.linear`` itself."""
    layer = nn.Linear(48, 64, bias=False)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        assert torch.equal(gemv.decode_linear(x, layer), F.linear(x, layer.weight))  # small: untouched
        monkeypatch.setattr(gemv, "LARGE", 0)
        got = gemv.decode_linear(x, layer)
    assert got.shape == (rows, 1, 64)
    torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)


def test_few_threads_gives_the_threads_back():
    threads = torch.get_num_threads()
    with gemv.few_threads(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(RuntimeError), gemv.few_threads(torch.device("cpu")):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("in_features", [24, 32])
def test_int8_layers_of_any_width_stay_finite_and_close(in_features):
    """The weight-only kernel needs a width that is a multiple of 16 (24 gave NaN or a crash):
    other widths take the dynamic kernel."""
    layer = nn.Linear(in_features, 40)
    x = torch.randn(3, in_features)
    with torch.no_grad():
        got = Int8Linear(layer, activations="bf16")(x)
        expected = layer(x)
    assert torch.isfinite(got).all()
    assert float((got - expected).abs().max()) <= 0.05 * float(expected.abs().max())
