"""torch.compile: the forward and the static-cache decode step compile and change nothing.

The static cache (:class:`pali.text.mt5.StaticKVCache`) is also checked eagerly, so its semantics
are covered without paying for compilation; the compiled checks run CPU inductor (slow).
"""

import pytest
import torch
from torch._dynamo.utils import counters

from pali import PaliModel
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


def test_static_cache_logits_equal_dynamic_cache(model):
    """Attending over every preallocated slot with a folded position mask = attending over the prefix."""
    px, ids, mask = _inputs()
    with torch.no_grad():
        hidden, enc_mask = model.encode(px, ids, mask)
        states = [model.text.start_decoding(hidden, enc_mask, 6, static=s) for s in (False, True)]
        tokens = torch.tensor([[0], [0]])
        for _ in range(6):
            dynamic, static = (model.text.decode_step(tokens[:, -1:], s) for s in states)
            assert (dynamic - static).abs().max() <= 1e-5
            tokens = torch.cat([tokens, dynamic[:, -1].argmax(-1, keepdim=True)], dim=1)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_generation_equals_dynamic(model, num_beams, monkeypatch):
    """generate(compile=True) with compilation switched off: same tokens from the static cache."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    px, ids, mask = _inputs()
    kwargs = dict(max_new_tokens=7, num_beams=num_beams, eos_token_id=-1)
    assert torch.equal(model.generate(px, ids, mask, **kwargs), model.generate(px, ids, mask, compile=True, **kwargs))


def test_compile_needs_the_cache(model):
    px, ids, mask = _inputs()
    with pytest.raises(InputError, match="use_cache"):
        model.generate(px, ids, mask, compile=True, use_cache=False)


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", [1, 3])
def test_compiled_generation_same_tokens_no_recompile(model, num_beams):
    px, ids, mask = _inputs()
    kwargs = dict(max_new_tokens=8, num_beams=num_beams, eos_token_id=-1)
    expected = model.generate(px, ids, mask, **kwargs)
    torch._dynamo.reset()
    counters.clear()
    # Any recompilation (a shape, stride or Python int changing per token) raises here.
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = model.generate(px, ids, mask, compile=True, **kwargs)
        again = model.generate(px.flip(0), ids, mask, compile=True, **kwargs)  # new data, same shapes
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
