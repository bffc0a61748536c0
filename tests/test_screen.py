"""pali.nn.screen: greedy's argmax read from a bf16 screen is the first maximum of the fp32
logits, ties, near-ties below bf16's resolution, suppressed ids and non-finite inputs included;
and a model that ``pali.quantize(model, "fp32")`` screens decodes the tokens of the model as it is."""

import copy
import pickle

import pytest
import torch
from torch import nn

import pali
from pali import InputError, PaliModel
from pali.nn import gemv
from pali.nn import screen as screen_module
from pali.nn.argmax import first_argmax, masked_first_argmax
from pali.nn.screen import ScreenedLinear, can_screen

pytestmark = pytest.mark.skipif(not gemv.has_onednn(), reason="the screen is oneDNN's packed bf16 product")


def _layer(vocab: int, features: int = 64, seed: int = 0) -> nn.Linear:
    """Rows of norms from 1e-2 to 1e2 (a real output layer's differ too)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(features, vocab, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(vocab, features, generator=g) * torch.logspace(-2, 2, vocab)[torch.randperm(vocab, generator=g)][:, None])
    return layer


def _inputs(rows: int, features: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g)
    x[:, 3] *= 50  # an outlier feature, as T5's hidden states have
    return x


@pytest.mark.parametrize("vocab", [300, 4096])  # one block; 1024 blocks of 4 (``argmax_blocks``)
def test_argmax_is_the_first_maximum_of_the_fp32_logits(vocab):
    head = ScreenedLinear(_layer(vocab))
    x = _inputs(64)
    with torch.inference_mode():
        assert torch.equal(head.argmax(x), first_argmax(head(x)))
        assert torch.equal(head.argmax(x[5:6]), first_argmax(head(x[5:6])))


def test_the_screen_lies_within_its_bound_and_keeps_the_true_maximum():
    """Every screened logit lies within its bound of the true (fp64) one; rows 0-199 are one
    logit perturbed by less than bf16 can resolve, so the screen ranks them by its rounding,
    not by their values, and the true maximum must still be among the rows kept."""
    layer, x = _layer(4096), _inputs(8)
    x = x[:1] + 1e-3 * x  # similar rows: one cluster of rows at the top for each
    with torch.no_grad():
        top_row = x[0] / x[0].norm() * 1000
        layer.weight[:200] = top_row * (1 + 1e-4 * torch.randn(200, 64, generator=torch.Generator().manual_seed(2)))
    head = ScreenedLinear(layer)
    with torch.inference_mode():
        rounded = x.to(torch.bfloat16)
        screened = gemv.onednn_linear(rounded, head.screen, None).float()
        truth = x.double() @ head.weight.double().t()
        within = (screened - truth).abs() <= head.error(x, rounded.float())[:, None] + 2.0**-8 * screened.abs()
        assert bool(within.all())
        best = truth.argmax(-1)
        assert not torch.equal(screened.argmax(-1), best)  # the screen alone would choose wrongly
        threshold = head._threshold(x, rounded.float(), screened.amax(-1))
        # Any row's fp32 logit may be up to the bound above its screened one, the top's as far below.
        assert bool((threshold <= screened.amax(-1) - 2 * head.error(x, rounded.float())).all())
        assert bool((screened.gather(1, best[:, None]).squeeze(1) >= threshold).all())
        assert torch.equal(head.argmax(x), best) and torch.equal(head.argmax(x), first_argmax(head(x)))
        kept = (screened >= threshold[:, None]).sum(-1)
        assert int(kept.max()) < 400, kept  # the cluster, not the whole vocabulary


def test_ties_and_near_ties_below_bf16_resolution():
    """Identical rows tie: the first wins. Rows that differ by less than bf16 can tell (one
    screened value for both) are told apart by their fp32 logits, either way round."""
    layer = _layer(4096)
    x = _inputs(1)
    with torch.no_grad():
        w = layer.weight
        unit = x[0] / x[0].norm()
        w[100] = unit * 1000  # the largest logit, far above the rest (row norms reach 100)
        w[2000] = w[100]  # a tie: 100 wins
        w[3000] = w[100] + 0.1 * unit  # above both by 1e-4 of the logit: less than bf16's step
        w[50] = w[100] - 0.1 * unit  # below, at a smaller index
    head = ScreenedLinear(layer)
    with torch.inference_mode():
        screened = gemv.onednn_linear(x.to(torch.bfloat16), head.screen, None)[0]
        assert screened[3000] == screened[100] == screened[50]  # the screen cannot tell them apart
        logits = head(x)[0]
        assert logits[3000] > logits[100] == logits[2000] > logits[50]
        assert head.argmax(x).tolist() == [3000]
        del_3000 = torch.tensor([3000])
        assert head.argmax(x, del_3000).tolist() == [100]  # the first of the tie
        assert torch.equal(head.argmax(x, del_3000), masked_first_argmax(head(x), del_3000))


def test_suppressed_ids_are_never_chosen_unless_all_are():
    head = ScreenedLinear(_layer(4096))
    x = _inputs(8)
    with torch.inference_mode():
        first = head.argmax(x)
        suppressed = first.unique()
        again = head.argmax(x, suppressed)
        assert not bool(torch.isin(again, suppressed).any())
        assert torch.equal(again, masked_first_argmax(head(x), suppressed))
        everything = torch.arange(4096)
        assert torch.equal(head.argmax(x, everything), masked_first_argmax(head(x), everything))


@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf")])
def test_inputs_the_screen_cannot_bound_take_the_full_product(value, monkeypatch):
    """Zeros tie every logit (every block a candidate); NaN and inf have no bound: the full fp32
    product decides, as ``first_argmax`` would. A finite input never computes every logit."""
    head = ScreenedLinear(_layer(4096))
    x = _inputs(3)
    x[1] = 0.0 if value == 0.0 else x[1]
    x[1, 7] = value if value != 0.0 else 0.0
    with torch.inference_mode():
        expected = first_argmax(head(x))
        assert torch.equal(head.argmax(x), expected)
        monkeypatch.setattr(screen_module.gemv, "linear_rows", lambda *a: pytest.fail("computed every logit"))
        assert torch.equal(head.argmax(x[[0, 2]]), expected[[0, 2]])


def test_a_large_batch_is_screened_too(monkeypatch):
    """80 rows keep their candidates (a few each) and never compute every logit."""
    head = ScreenedLinear(_layer(4096))
    x = _inputs(80)
    with torch.inference_mode():
        expected = first_argmax(head(x))
        monkeypatch.setattr(screen_module.gemv, "linear_rows", lambda *a: pytest.fail("computed every logit"))
        assert torch.equal(head.argmax(x), expected)


def test_copies_and_pickles_rebuild_the_screen():
    head = ScreenedLinear(_layer(300))
    x = _inputs(4)
    with torch.inference_mode():
        expected = head.argmax(x)
        for clone in (copy.deepcopy(head), pickle.loads(pickle.dumps(head))):
            assert torch.equal(clone.argmax(x), expected) and torch.equal(clone(x), head(x))
    assert "bf16 screen" in repr(head) and head.weight_bytes == 300 * 64 * 4 and head.argmax_bytes == 300 * 64 * 2


def test_a_bf16_layer_is_screened_in_fp32():
    """As ``pali.quantize``'s other fp32 form: a bf16 layer's weights are widened to fp32."""
    layer = _layer(4096).to(torch.bfloat16)
    head = ScreenedLinear(layer)
    x = _inputs(4).to(torch.bfloat16)
    assert head.weight.dtype == torch.float32 and torch.equal(head.weight, layer.weight.float())
    with torch.inference_mode():
        assert head(x).dtype == torch.bfloat16
        assert torch.equal(head.argmax(x), first_argmax(x.float() @ head.weight.t()))


def test_what_cannot_be_screened_is_refused(monkeypatch):
    with pytest.raises(InputError, match="bias-free floating-point one; got torch.float32 weights and a bias"):
        ScreenedLinear(nn.Linear(4, 8))
    with pytest.raises(InputError, match="on the CPU; this layer is on meta"):
        ScreenedLinear(nn.Linear(4, 8, bias=False, device="meta"))
    with monkeypatch.context() as patch:
        patch.setattr(screen_module, "can_pack", lambda: False)
        with pytest.raises(InputError, match="needs oneDNN's packed bf16 kernel"):
            ScreenedLinear(nn.Linear(4, 8, bias=False))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PaliModel.from_preset("pali-tiny").eval()


def _prompts():
    g = torch.Generator().manual_seed(5)
    px = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(2, 256, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 3:] = 0
    return px, ids, mask


@pytest.mark.parametrize("options", [
    {}, {"suppress_tokens": (5, 9, 17)}, {"num_beams": 3}, {"do_sample": True, "top_k": 5},
])
def test_a_screened_model_decodes_the_tokens_of_the_model_as_it_is(model, options, monkeypatch):
    """Greedy (with suppressed ids) goes through the screen; beam search and sampling through
    the fp32 logits: every strategy gives the tokens of the unconverted model."""
    monkeypatch.setattr(pali.models.quantize, "can_screen", lambda: True)  # whatever this CPU has
    screened = pali.quantize(copy.deepcopy(model), "fp32")
    assert isinstance(screened.text.lm_head, ScreenedLinear)
    chosen = []
    argmax = ScreenedLinear.argmax
    monkeypatch.setattr(ScreenedLinear, "argmax", lambda self, *a: chosen.append(1) or argmax(self, *a))
    px, ids, mask = _prompts()
    kwargs = dict(max_new_tokens=6, eos_token_id=-1, **options)
    expected = model.generate(px, ids, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    got = screened.generate(px, ids, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(got, expected)
    assert (len(chosen) == 6) == (set(options) <= {"suppress_tokens"})
    if "suppress_tokens" in options:
        assert not bool(torch.isin(got, torch.tensor(options["suppress_tokens"])).any())


@pytest.mark.slow
def test_a_screened_model_compiled_decodes_the_same_tokens(model, monkeypatch):
    monkeypatch.setattr(pali.models.quantize, "can_screen", lambda: True)
    screened = pali.quantize(copy.deepcopy(model), "fp32")
    px, ids, mask = _prompts()
    kwargs = dict(max_new_tokens=6, eos_token_id=-1)
    torch._dynamo.reset()
    assert torch.equal(screened.generate(px, ids, mask, compile=True, **kwargs), model.generate(px, ids, mask, **kwargs))
