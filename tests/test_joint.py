"""pali.nn.joint: layers that read one input, multiplied as one product. The same values as one
by one; the same parameters after ``adjoin`` (state dict, loading, training); one product only
where it is exact to take one."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pali import PaliModel
from pali.nn import joint
from pali.nn.gemv import decoding_step


def _layers(*outs, features=16, bias=False):
    torch.manual_seed(0)
    return [nn.Linear(features, n, bias=bias) for n in outs]


def _calls(monkeypatch):
    """The products ``joint_linear`` takes as one, counted."""
    calls = []
    real = joint.linear_rows
    monkeypatch.setattr(joint, "linear_rows", lambda *a: calls.append(a[1].shape) or real(*a))
    return calls


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 8, 40])
def test_one_product_equals_the_separate_ones(rows, monkeypatch):
    layers = _layers(12, 12, 20)
    x = torch.randn(rows, 1, 16)
    calls = _calls(monkeypatch)
    with torch.no_grad(), decoding_step():
        assert joint.adjoin(layers)
        products = joint.joint_linear(x, layers)
    assert calls == [(44, 16)]
    for product, layer in zip(products, layers):
        assert product.shape == (rows, 1, layer.out_features)
        # The same kernels over the same inputs: bit for bit on the machines measured.
        torch.testing.assert_close(product, F.linear(x, layer.weight), rtol=1e-6, atol=1e-6)


def test_adjoin_keeps_the_parameters_and_what_loads_into_them():
    layers = _layers(12, 12, 20)
    params = [layer.weight for layer in layers]
    before = [p.detach().clone() for p in params]
    assert joint.adjoin(layers)
    assert [layer.weight for layer in layers] == params  # the same Parameter objects
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1
    assert joint.adjoin(layers)  # already laid out: nothing moves
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1
    # load_state_dict copies into the parameters: still one block, and the product uses the new values.
    new = [torch.randn_like(p) for p in params]
    for layer, w in zip(layers, new):
        layer.load_state_dict({"weight": w})
    x = torch.randn(1, 16)
    with torch.no_grad():
        assert joint._joint_weight(layers) is not None
        for product, w in zip(joint.joint_linear(x, layers), new):
            torch.testing.assert_close(product, F.linear(x, w), rtol=1e-6, atol=1e-6)


def test_anything_but_plain_adjacent_layers_is_multiplied_one_by_one(monkeypatch):
    x = torch.randn(1, 16)
    layers = _layers(8, 8)
    assert joint.adjoin(layers)
    calls = _calls(monkeypatch)
    seen = []
    handle = layers[1].register_forward_hook(lambda *_: seen.append(1))
    with torch.no_grad():
        joint.joint_linear(x, layers)
    handle.remove()
    assert seen == [1] and calls == []  # a hook sees its call
    joint.joint_linear(x, layers)  # gradients on: one by one
    assert calls == []
    with torch.no_grad():
        layers[1].weight.data = layers[1].weight.data.clone()  # moved away
        joint.joint_linear(x, layers)
        assert calls == [] and joint._joint_weight(layers) is None
        biased = _layers(8, 8, bias=True)
        assert not joint.adjoin(biased)
        block = torch.cat([layer.weight.detach() for layer in biased])
        for layer, part in zip(biased, block.split([8, 8])):
            layer.weight.data = part  # adjacent, but a bias is added: not this product
        assert joint._joint_weight(biased) is None
        wide = _layers(8) + _layers(8, features=12)
        assert not joint.adjoin(wide)
        assert not joint.adjoin([layer.double() for layer in _layers(8, 8)])
        monkeypatch.setattr(joint, "LARGE", 100)
        assert not joint.adjoin(_layers(8, 8))  # large weights stay where they are


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PaliModel.from_preset("pali-tiny").eval()


def _inputs():
    g = torch.Generator().manual_seed(4)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(2, 256, (2, 5), generator=g)


def _storages(model):
    layer = model.text.decoder.layers[0]
    groups = (layer.self_attn.inputs(), [layer.cross_attn.k, layer.cross_attn.v], layer.mlp.inputs())
    return [len({m.weight.untyped_storage().data_ptr() for m in group}) for group in groups]


def test_generate_lays_out_the_decoder_and_tokens_do_not_change(model, tmp_path):
    fresh = PaliModel.from_preset("pali-tiny").eval()
    fresh.load_state_dict(model.state_dict())
    assert _storages(fresh) == [3, 2, 2]
    px, ids = _inputs()
    with torch.no_grad():
        logits = fresh(px, ids, decoder_input_ids=torch.zeros(2, 4, dtype=torch.long)).logits
    tokens = fresh.generate(px, ids, max_new_tokens=8, eos_token_id=-1)
    assert _storages(fresh) == [1, 1, 1]
    assert torch.equal(tokens, fresh.generate(px, ids, max_new_tokens=8, eos_token_id=-1, use_cache=False))
    with torch.no_grad():
        torch.testing.assert_close(fresh(px, ids, decoder_input_ids=torch.zeros(2, 4, dtype=torch.long)).logits, logits,
                                   rtol=1e-6, atol=1e-6)
    # What it saves is what it had; a model loaded in place from it is laid out by its first generate.
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    fresh.save_pretrained(tmp_path / "saved")
    loaded = PaliModel.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(loaded.generate(px, ids, max_new_tokens=8, eos_token_id=-1), tokens)
    assert _storages(loaded) == [1, 1, 1]


def test_a_model_trains_after_generating_and_its_gradients_do_not_change(model):
    px, ids = _inputs()
    labels = torch.randint(2, 256, (2, 4))
    grads = []
    for generate_first in (False, True):
        m = PaliModel.from_preset("pali-tiny")
        m.load_state_dict(model.state_dict())
        if generate_first:
            m.eval().generate(px, ids, max_new_tokens=3)  # inference mode inside
        m.train()
        m(px, ids, labels=labels).loss.backward()
        q = m.text.decoder.layers[0].self_attn.q.weight
        grads.append(q.grad.clone())
        torch.optim.SGD(m.parameters(), lr=0.1).step()
        if generate_first:  # the update lands in the block the joint product reads
            with torch.no_grad():
                joint_q = joint.joint_linear(torch.ones(1, q.shape[1]), m.text.decoder.layers[0].self_attn.inputs())[0]
            torch.testing.assert_close(joint_q, F.linear(torch.ones(1, q.shape[1]), q), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
