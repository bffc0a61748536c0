"""pali.quantize: int8 / bf16 / packed fp32 weights for the layers a decoding step reads, close to
fp32 (packed fp32: within fp32 rounding, the same tokens); and the
decode step's CPU kernels (``pali.nn.gemv``) equal to ``F.linear``. Speed lives in
``benchmarks/decode_peers.py``."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pali
from pali import InputError, PaliModel
from pali.nn import gemv
from pali.nn import quantize as nn_quantize
from pali.nn.quantize import Int8Linear, PackedLinear
from pali.nn.screen import ScreenedLinear, can_screen


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


@pytest.mark.parametrize(("fmt", "screen", "layer", "tolerance"), [
    ("int8", None, Int8Linear, 0.05), ("bf16", None, PackedLinear, 0.02), ("fp32", False, PackedLinear, 1e-5),
    pytest.param("fp32", None, ScreenedLinear, 1e-5,
                 marks=pytest.mark.skipif(not can_screen(), reason="no bf16 instructions or oneDNN packing")),
])
def test_quantize_converts_the_decoding_layers_and_stays_close(model, fmt, screen, layer, tolerance):
    px, ids, mask, labels = _inputs()
    quantized = pali.quantize(copy.deepcopy(model), fmt, screen=screen)
    assert isinstance(quantized.text.lm_head, layer)
    assert pali.models.quantize.weight_format(quantized) == fmt
    # fp32 packs the output layer only: the decoder's small weights stay plain
    assert all((type(m) is nn.Linear) == (fmt == "fp32") for m in quantized.text.decoder.modules()
               if isinstance(m, (nn.Linear, layer)))
    with torch.no_grad():
        expected = model(px, ids, mask, labels=labels).logits
        got = quantized(px, ids, mask, labels=labels).logits
    assert got.dtype == expected.dtype
    error = float((got - expected).abs().max() / expected.abs().max())
    assert (0 < error or fmt == "fp32") and error <= tolerance, error  # fp32: rounding at most
    out = quantized.generate(px, ids, mask, max_new_tokens=5, eos_token_id=-1)
    assert out.shape == (2, 5)
    if fmt == "fp32":  # the same weights: the same tokens
        assert torch.equal(out, model.generate(px, ids, mask, max_new_tokens=5, eos_token_id=-1))


@pytest.mark.parametrize(("fmt", "bf16_cpu", "encoder", "converted"), [
    ("int8", True, None, True), ("int8", False, None, False), ("int8", True, False, False),
    ("bf16", False, None, True), ("int8", False, True, True), ("fp32", False, None, True), ("fp32", True, False, False),
])
def test_the_text_encoder_goes_bf16_where_the_cpu_multiplies_bf16(model, monkeypatch, fmt, bf16_cpu, encoder, converted):
    """The encoder runs once per generation over every prompt row: bf16 where the CPU has bf16
    instructions (int8 default), always for "bf16", packed fp32 for "fp32", never when told not
    to; the vision tower keeps its weights."""
    import pali.models.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "has_bf16_instructions", lambda: bf16_cpu)
    quantized = pali.quantize(copy.deepcopy(model), fmt, encoder=encoder)
    kinds = {type(m) for m in quantized.text.encoder.modules()}
    assert (PackedLinear in kinds) == converted and (nn.Linear not in kinds) == converted
    encoder_dtype = torch.float32 if fmt == "fp32" else torch.bfloat16
    assert all(m.dtype == encoder_dtype for m in quantized.text.encoder.modules() if isinstance(m, PackedLinear))
    assert not any(isinstance(m, (PackedLinear, Int8Linear)) for m in quantized.vision.modules())
    px, ids, mask, labels = _inputs()
    with torch.no_grad():
        expected, got = model.encode(px, ids, mask)[0], quantized.encode(px, ids, mask)[0]
    assert got.dtype == expected.dtype == torch.float32  # the residual stream keeps the model's dtype
    if fmt != "fp32":
        assert torch.equal(got, expected) != converted
    torch.testing.assert_close(got, expected, **(dict(rtol=1e-5, atol=1e-5) if fmt == "fp32" else dict(rtol=0.05, atol=0.05)))


def test_quantize_refuses_what_it_cannot_do(model):
    with pytest.raises(InputError, match="unknown weight format 'int4'"):
        pali.quantize(copy.deepcopy(model), "int4")
    twice = pali.quantize(copy.deepcopy(model), "int8")
    with pytest.raises(InputError, match="not quantized yet"):
        pali.quantize(twice, "int8")
    with pytest.raises(InputError, match="text decoder"):
        pali.quantize(nn.Linear(2, 2), "int8")
    with torch.device("meta"):
        on_meta = PaliModel.from_preset("pali-tiny")
    for screen in (False, True):
        with pytest.raises(InputError, match="run on the CPU; this layer is on meta"):
            pali.quantize(copy.deepcopy(on_meta), "fp32", screen=screen)
    with pytest.raises(InputError, match="screen=True is for the 'fp32' format"):
        pali.quantize(copy.deepcopy(model), "int8", screen=True)
    no_encoder = copy.deepcopy(model)
    del no_encoder.text.encoder
    with pytest.raises(InputError, match="encoder=True, but MT5 has no text encoder"):
        pali.quantize(no_encoder, "int8", encoder=True)


@pytest.fixture
def two_threads():
    """Two intra-op threads, as on any multi-core CPU (the suite's workers run on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows", [1, 3])
def test_inference_linear_equals_linear(rows, two_threads, monkeypatch):
    """The output layer's split product gives ``F.linear``'s numbers up to fp32 rounding; small
    weights outside a step are ``F.linear``."""
    layer = nn.Linear(48, 64, bias=False)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        assert torch.equal(gemv.inference_linear(x, layer), F.linear(x, layer.weight))  # small: untouched
        monkeypatch.setattr(gemv, "LARGE", 0)
        got = gemv.inference_linear(x, layer)
    assert got.shape == (rows, 1, 64)
    torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 3, gemv.FEW_ROWS, gemv.FEW_ROWS + 1, 9])
def test_small_weights_are_split_across_threads_inside_a_step(rows, two_threads, monkeypatch):
    """Inside a step (``decoding_step``) a small weight of up to ``FEW_ROWS`` rows is multiplied
    in one block per thread and equals ``F.linear`` to fp32 rounding; outside a step it is
    ``F.linear`` itself, and with more rows oneDNN's kernel (fp32 rounding again)."""
    layer = nn.Linear(48, 64, bias=False)
    x = torch.randn(rows, 1, 48)
    expected = F.linear(x, layer.weight)
    blocks_seen = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: blocks_seen.append(a.shape[0]) or bmm(a, b))
    with torch.no_grad():
        if rows <= gemv.FEW_ROWS:
            assert torch.equal(gemv.inference_linear(x, layer), expected)  # outside a step
        with gemv.decoding_step():
            got = gemv.inference_linear(x, layer)
        if rows <= gemv.FEW_ROWS:
            assert torch.equal(gemv.inference_linear(x, layer), expected)  # the mark is gone again
    assert blocks_seen == ([2] if rows <= gemv.FEW_ROWS else [])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("threads", "out_features", "blocks"), [(3, 63, 3), (3, 64, 2), (6, 250112, 4), (4, 7, 1)])
def test_blocks_divide_the_rows_when_threads_do_not(threads, out_features, blocks, monkeypatch):
    """A thread count that does not divide the output rows splits into the largest divisor that
    fits (one block: ``F.linear`` itself) instead of falling back to one thread."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert gemv._blocks(out_features, large=True) == blocks
    layer = nn.Linear(16, out_features, bias=False)
    x = torch.randn(2, 1, 16)
    with torch.no_grad(), gemv.decoding_step():
        got = gemv.inference_linear(x, layer)
    torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("rows", "columns"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 5)])
@pytest.mark.parametrize("large", [False, True])
def test_few_rows_are_multiplied_as_measured_and_come_back_laid_out(rows, columns, large, two_threads, monkeypatch):
    """Inside a step, three rows are multiplied as four (a zero row added, dropped after) and
    equal ``F.linear`` to fp32 rounding; the product comes back laid out as ``F.linear`` returns
    it, not as the blocks' transposed view (SDPA, ``log_softmax`` and every elementwise operation
    after it take their fast paths), for a small weight and an output layer alike."""
    if large:
        monkeypatch.setattr(gemv, "LARGE", 0)
    layer = nn.Linear(48, 64, bias=False)
    x = torch.randn(rows, 1, 48)
    columns_seen = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: columns_seen.append(b.shape[-1]) or bmm(a, b))
    with torch.no_grad(), gemv.decoding_step():
        got = gemv.inference_linear(x, layer)
    assert columns_seen == [columns]
    assert got.shape == (rows, 1, 64)
    assert got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_many_rows_take_onednn_and_stay_close(bias, monkeypatch):
    """More than ``FEW_ROWS`` rows (an encoder's, the cross-attention projection's) run oneDNN's
    fp32 kernel, bias included, within fp32 rounding of ``F.linear``."""
    if not gemv.has_onednn():
        pytest.skip("this torch has no oneDNN linear kernel")
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or kernel(*a))
    layer = nn.Linear(48, 64, bias=bias)
    x = torch.randn(3, 7, 48)
    with torch.no_grad():
        got = gemv.inference_linear(x, layer)
    assert calls == [1] and got.shape == (3, 7, 64)
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2])
def test_one_thread_takes_onednn_for_one_row_by_a_large_weight(rows, monkeypatch):
    """On one thread the split has one block; one row by the output layer takes oneDNN's kernel
    (MKL's matrix-vector product reads it at two thirds the speed), more rows ``W @ x.T``."""
    if not gemv.has_onednn():
        pytest.skip("this torch has no oneDNN linear kernel")
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(gemv, "LARGE", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    layer = nn.Linear(48, 64, bias=False)
    x = torch.randn(rows, 1, 48)
    with torch.no_grad():
        got = gemv.inference_linear(x, layer)
    assert calls == [1] * (rows == 1)
    torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)


def test_hooked_layers_are_called(two_threads):
    """A forward hook on a layer (or a global one) sees every call: such a layer is ``layer(x)``."""
    layer = nn.Linear(48, 64, bias=False)
    seen = []
    handle = layer.register_forward_hook(lambda *_: seen.append(1))
    try:
        with torch.no_grad(), gemv.decoding_step():
            gemv.inference_linear(torch.randn(1, 1, 48), layer)
            gemv.inference_linear(torch.randn(20, 1, 48), layer)
    finally:
        handle.remove()
    assert seen == [1, 1]
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: seen.append(2))
    try:
        with torch.no_grad():
            gemv.inference_linear(torch.randn(20, 1, 48), layer)
    finally:
        handle.remove()
    assert seen == [1, 1, 2]


def test_inference_linear_leaves_everything_else_to_the_layer(two_threads):
    """Gradients, a bias, an adapter around the layer, another dtype: ``layer(x)``, bit for bit."""
    x = torch.randn(2, 1, 48)
    plain = nn.Linear(48, 64, bias=False)
    with_bias = nn.Linear(48, 64)
    wrapped = nn.Sequential(plain)
    half = nn.Linear(48, 64, bias=False).to(torch.bfloat16)
    with gemv.decoding_step():
        assert torch.equal(gemv.inference_linear(x, plain), plain(x))  # gradients on: untouched
        assert gemv.inference_linear(x, plain).requires_grad
        with torch.no_grad():
            for layer, inp in ((with_bias, x), (wrapped, x), (half, x.bfloat16())):
                assert torch.equal(gemv.inference_linear(inp, layer), layer(inp))


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_steps_split_over_the_threads_compiled_for(threads, two_threads, monkeypatch):
    """Traced, ``inference_linear`` splits a small weight of a few rows over ``compiled_threads()``'s
    count (a constant of the graph, no graph break), or, at one thread, stays ``F.linear``; more
    rows call oneDNN's kernel as one opaque op."""
    torch.set_num_threads(threads)
    monkeypatch.setattr(gemv, "_compiled", dict(gemv._compiled))
    assert gemv.compiled_threads() == threads
    layer = nn.Linear(48, 64, bias=False)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    step = torch.compile(lambda x: gemv.inference_linear(x, layer), backend=backend, fullgraph=True)
    few, many = torch.randn(3, 1, 48), torch.randn(gemv.FEW_ROWS + 1, 1, 48)
    with torch.no_grad():
        got = [step(few), step(many)]
    torch._dynamo.reset()
    assert ("bmm" in graphs[0]) == (threads > 1)
    assert ("onednn_linear" in graphs[1]) == gemv.has_onednn()
    for x, y in zip((few, many), got):
        torch.testing.assert_close(y, F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_split_step_keeps_the_tokens_and_logits(model, num_beams, two_threads):
    """Cached generation with the split products (two threads) gives the tokens of the uncached
    reference, which recomputes the prefix with ``F.linear``; the step's logits stay within fp32
    rounding of the unsplit step's (one thread: one block)."""
    px, ids, mask, _ = _inputs()
    kwargs = dict(max_new_tokens=6, num_beams=num_beams, eos_token_id=-1)
    with torch.no_grad():
        assert torch.equal(model.generate(px, ids, mask, **kwargs),
                           model.generate(px, ids, mask, use_cache=False, **kwargs))
        text = model.text
        hidden = text.encode(text.embed(ids), mask.bool())
        logits = {}
        for threads in (2, 1):
            torch.set_num_threads(threads)
            text.start_decoding(hidden, mask.bool(), 4)
            logits[threads] = text.decode_step(torch.zeros(2, 1, dtype=torch.long), 0)
        text.decoder.kv_cache.release()
    torch.testing.assert_close(logits[2], logits[1], rtol=1e-5, atol=1e-5)


def test_decoding_step_mark_is_left_on_error():
    with pytest.raises(RuntimeError), gemv.decoding_step():
        assert gemv._step.active
        raise RuntimeError("inside")
    assert not gemv._step.active


@pytest.mark.parametrize("packs", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_layers_equal_the_linear_they_replace(dtype, bias, packs, monkeypatch):
    """A packed layer gives ``F.linear``'s numbers in its dtype (fp32: up to rounding; another
    summation order), keeps the input's dtype and shape, and keeps nothing in the state dict; where
    this torch cannot pack, it keeps the plain weight and is ``F.linear`` itself."""
    if packs and not nn_quantize.can_pack():
        pytest.skip("this torch cannot pack weights for oneDNN")
    monkeypatch.setattr(nn_quantize, "can_pack", lambda: packs)
    layer = nn.Linear(48, 40, bias=bias)
    x = torch.randn(3, 5, 48)
    packed = PackedLinear(layer, dtype)
    assert packed.blocked == packs and packed.state_dict() == {}
    assert packed.weight_bytes == 48 * 40 * dtype.itemsize
    with torch.no_grad():
        got = packed(x)
        expected = F.linear(x.to(dtype), layer.weight.to(dtype), None if layer.bias is None else layer.bias.to(dtype))
    assert got.dtype == x.dtype and got.shape == (3, 5, 40)
    if packs and dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(got, expected.to(x.dtype))


def test_packed_layers_copy_and_pickle():
    """An opaque packed tensor has no storage: copied or saved, the layer carries its weight plain
    and packs it again, with the same results."""
    layer = PackedLinear(nn.Linear(32, 16), torch.float32)
    x = torch.randn(2, 32)
    copied = copy.deepcopy(layer)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        assert torch.equal(copied(x), layer(x)) and torch.equal(loaded(x), layer(x))
    assert copied.weight.layout == layer.weight.layout == loaded.weight.layout


def test_packed_models_compile(model):
    """A packed model's compiled step calls oneDNN's kernel as one opaque op: same tokens."""
    px, ids, mask, _ = _inputs()
    packed = pali.quantize(copy.deepcopy(model), "fp32")
    kwargs = dict(max_new_tokens=4, eos_token_id=-1)
    with torch.no_grad():
        assert torch.equal(packed.generate(px, ids, mask, compile=True, **kwargs), packed.generate(px, ids, mask, **kwargs))


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


@pytest.mark.parametrize("fmt", ["int8", "fp32"])
def test_a_quantized_model_is_not_saved_as_a_checkpoint(model, fmt, tmp_path):
    """Its converted layers hold no parameters: a checkpoint of it would lack them. Saving
    refuses and leaves no folder; the model saved before converting loads."""
    from pali.errors import CheckpointError

    quantized = pali.quantize(copy.deepcopy(model), fmt)
    with pytest.raises(CheckpointError, match=r"weights of its architecture are not in its state dict .*save the model before"):
        quantized.save_pretrained(tmp_path / "quantized")
    assert not (tmp_path / "quantized").exists()
    model.save_pretrained(tmp_path / "plain")
    assert PaliModel.from_pretrained(tmp_path / "plain") is not None
