"""torch.compile: the forward and the cached decode step compile and change nothing.

The decode step is one function, eager or compiled (``pali.generation.kv_cache.KVCache`` holds its
keys/values); its semantics are checked eagerly, without paying for compilation, and the compiled
checks run CPU inductor (slow).
"""

import copy
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from pali import PaliModel, kernels
from pali.errors import InputError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PaliModel.from_preset("pali-tiny").eval()


def _inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    px = torch.randn(batch, 3, 32, 32, generator=g)
    ids = torch.randint(2, 256, (batch, 5), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, 3:] = 0  # prompt padding: the cross-attention padding path runs too
    return px, ids, mask


def test_cached_step_logits_equal_the_uncached_decoder(model):
    """Attending over every preallocated slot, causal from a tensor position (the compiled form),
    or over the filled prefix (an int position) = the whole prefix."""
    px, ids, mask = _inputs()
    with torch.no_grad():
        hidden, enc_mask = model.encode(px, ids, mask)
        model.text.start_decoding(hidden, enc_mask, 6)
        tokens = torch.tensor([[0], [0]])
        for t in range(6):
            whole_buffer = model.text.lm_head(model.text.decode_hidden(tokens[:, -1:], torch.tensor(t)))[:, -1]
            step = model.text.decode_step(tokens[:, -1:], t)[:, -1]  # the filled prefix (and written again)
            full = model.text.decode(tokens, hidden, enc_mask)[:, -1]
            assert (step - full).abs().max() <= 1e-5
            assert (whole_buffer - full).abs().max() <= 1e-5
            tokens = torch.cat([tokens, step.argmax(-1, keepdim=True)], dim=1)


def _spy_on_the_fused_kernel(monkeypatch):
    """Replace the kernel entry ``pali.nn.attention`` calls with the reference, recording every call."""
    calls = []

    def spy(q, k, v, **kwargs):
        calls.append(kwargs)
        return kernels.attention_reference(q, k, v, **kwargs)

    monkeypatch.setattr(kernels, "attention", spy)
    return calls


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_decoding_reaches_the_fused_kernel_with_the_bias_table(model, compiled, num_beams, monkeypatch):
    """Eager and compiled decoding hand the triton backend the decoder's [H, 32] table and the
    step's position, never a dense bias, and give the SDPA tokens."""
    px, ids, mask = _inputs()
    kwargs = dict(max_new_tokens=5, num_beams=num_beams, eos_token_id=-1)
    expected = model.generate(px, ids, mask, **kwargs)
    calls = _spy_on_the_fused_kernel(monkeypatch)
    torch._dynamo.reset()
    try:
        got = model.set_attention_backend("triton").generate(px, ids, mask, compile=compiled, **kwargs)
    finally:
        model.set_attention_backend("auto")
    assert torch.equal(got, expected)
    layers = model.config.text.num_decoder_layers
    self_attn = [c for c in calls if c["causal"]]
    assert [c["q_offset"] for c in self_attn] == [t for t in range(5) for _ in range(layers)]
    for c in self_attn:
        assert "bias" not in c and c["bias_bidirectional"] is False
        assert torch.equal(c["bias_table"], model.text.decoder.relpos_bias)
    cross = [c for c in calls if not c["causal"] and c["bias_table"] is None and c["scale"] == 1.0]  # not ViT
    assert len(cross) == 5 * layers  # cross-attention reaches the kernel too, once per layer and step


def test_compile_needs_the_cache(model):
    px, ids, mask = _inputs()
    with pytest.raises(InputError, match="use_cache"):
        model.generate(px, ids, mask, compile=True, use_cache=False)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])  # 2: the decoder's weights split across threads
@pytest.mark.parametrize("num_beams", [1, 3])
def test_compiled_generation_same_tokens_no_recompile(model, num_beams, threads, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _compiled_generation_same_tokens_no_recompile(model, num_beams)
    finally:
        torch.set_num_threads(before)


def _compiled_generation_same_tokens_no_recompile(model, num_beams):
    px, ids, mask = _inputs()
    kwargs = dict(max_new_tokens=8, num_beams=num_beams, eos_token_id=-1)
    expected = model.generate(px, ids, mask, **kwargs)
    torch._dynamo.reset()
    counters.clear()
    # Any recompilation (a shape, stride or Python int changing per token) raises here.
    with torch._dynamo.config.patch(error_on_recompile=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = model.generate(px, ids, mask, compile=True, **kwargs)
        again = model.generate(px.flip(0), ids, mask, compile=True, **kwargs)  # new data, same shapes
    # Nothing the step traces is a cached function (dynamo warns that it bypasses the cache).
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert torch.equal(got, expected)
    assert again.shape[0] == 2
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.slow
def test_compiled_forward_matches_eager(model):
    px, ids, mask = _inputs()
    labels = torch.tensor([[5, 6, 7, 1], [8, 1, -100, -100]])
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(px, ids, mask, labels=labels)
        got = compiled(px, ids, mask, labels=labels)
    assert (got.logits - expected.logits).abs().max() <= 1e-5
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5


@pytest.mark.slow
def test_compiled_generation_checks_guards_on_its_first_step(model):
    """A compiled generation skips torch.compile's guards after its first step, never on it: a
    constant the graph baked in (a norm's eps) changed between generations recompiles, and a new
    batch size picks its own graph, so the tokens always follow the model as it is."""
    changed = copy.deepcopy(model)
    px, ids, mask = _inputs()
    kwargs = dict(max_new_tokens=6, eos_token_id=-1)
    torch._dynamo.reset()
    before = changed.generate(px, ids, mask, compile=True, **kwargs)
    for layer in changed.text.decoder.layers:
        layer.mlp_norm.eps = 10.0
    expected = changed.generate(px, ids, mask, **kwargs)
    assert not torch.equal(expected, before)  # the change matters
    assert torch.equal(changed.generate(px, ids, mask, compile=True, **kwargs), expected)
    one = (px[:1], ids[:1], mask[:1])
    assert torch.equal(changed.generate(*one, compile=True, **kwargs), changed.generate(*one, **kwargs))
