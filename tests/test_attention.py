"""The model's attention backends against the fp32 reference, gradients included."""

import subprocess
import sys

import pytest
import torch

from pali.nn.attention import RelativeBias, attend, resolve_backend
from pali.kernels import attention_reference, relative_position_bucket


def _inputs(b=2, h=3, lq=9, lk=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, requires_grad=False) for n in (lq, lk, lk))
    table = torch.randn(h, 32, generator=g)
    return q, k, v, table


@pytest.mark.parametrize("causal, bidirectional, q_offset, lq, lk", [
    (False, True, 0, 9, 9),     # encoder self-attention
    (True, False, 0, 9, 9),     # decoder self-attention
    (True, False, 8, 1, 9),     # one decode step against a cache
    (False, True, 0, 4, 11),    # cross-attention shape (bias only for the test)
])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_reference_with_grads(causal, bidirectional, q_offset, lq, lk, padded):
    q, k, v, table = _inputs(lq=lq, lk=lk)
    mask = torch.ones(2, lk, dtype=torch.bool)
    if padded:
        mask[1, lk - 3 :] = False
    leaves = [t.clone().requires_grad_() for t in (q, k, v, table)]
    bias = RelativeBias(leaves[3], bidirectional)
    out = attend(*leaves[:3], backend="sdpa", scale=1.0, causal=causal, bias=bias, q_offset=q_offset,
                 key_padding_mask=mask if padded else None)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, table)]
    ref = attention_reference(*ref_leaves[:3], scale=1.0, causal=causal, bias_table=ref_leaves[3],
                              bias_bidirectional=bidirectional, q_offset=q_offset,
                              key_padding_mask=mask if padded else None)
    assert (out - ref).abs().max() < 1e-5
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for a, b in zip(leaves, ref_leaves):
        assert (a.grad - b.grad).abs().max() < 1e-4
        assert torch.isfinite(a.grad).all()


def test_padding_never_builds_a_batch_by_heads_mask(monkeypatch):
    """SDPA receives at most a [1, H, Lq, Lk] bias, or [B, 1, 1, Lk] padding when there is no bias."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(None if attn_mask is None else tuple(attn_mask.shape))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v, table = _inputs(b=4, lq=9, lk=9)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[2, 4:] = False
    attend(q, k, v, backend="sdpa", scale=1.0, bias=RelativeBias(table, True), key_padding_mask=mask)
    attend(q[:, :, :1], k, v, backend="sdpa", scale=1.0, key_padding_mask=mask)  # cross-attention step
    assert seen == [(1, 3, 9, 9), (4, 1, 1, 9)]


def test_bucket_function_matches_transformers():
    transformers = pytest.importorskip("transformers")
    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        ours = relative_position_bucket(rel, bidirectional=bidirectional)
        theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            rel, bidirectional=bidirectional, num_buckets=32, max_distance=128
        )
        assert torch.equal(ours, theirs)


def test_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("eager", torch.device("cpu")) == "eager"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", torch.device("cpu"))


def _logits_and_grads(model, backend, px, ids, mask, labels):
    """Teacher-forced logits and every parameter's gradient with ``backend`` attention."""
    model.zero_grad()
    out = model.set_attention_backend(backend)(px, ids, mask, labels=labels)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_model_runs_on_the_fused_kernels():
    """Forcing the Triton backend (interpreted on CPU) gives the eager model's logits and grads."""
    pytest.importorskip("triton")
    from pali import PaliModel

    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").eval()
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(2, 256, (2, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]])
    labels = torch.tensor([[5, 6, 1], [7, 1, -100]])
    results = {backend: _logits_and_grads(model, backend, px, ids, mask, labels) for backend in ("eager", "triton")}
    assert (results["triton"][0] - results["eager"][0]).abs().max() < 1e-5
    for name, grad in results["eager"][1].items():
        assert (results["triton"][1][name] - grad).abs().max() < 1e-4, name
    tokens = model.set_attention_backend("triton").generate(px, ids, mask, max_new_tokens=4, num_beams=2)
    assert torch.equal(tokens, model.set_attention_backend("eager").generate(px, ids, mask, max_new_tokens=4, num_beams=2))


@pytest.mark.gpu
def test_model_on_gpu_kernels_matches_sdpa():
    """On CUDA, the whole model on the compiled kernels gives SDPA's logits, gradients and beams."""
    from pali import MT5Config, PaliConfig, PaliModel, ViTConfig

    torch.manual_seed(0)
    config = PaliConfig(
        vision=ViTConfig(image_size=112, patch_size=14, hidden_size=256, depth=2, mlp_dim=512, num_heads=4),
        text=MT5Config(vocab_size=512, d_model=256, d_ff=512, num_heads=4, d_kv=64,
                       num_encoder_layers=2, num_decoder_layers=2),
    )
    model = PaliModel(config).cuda().eval()
    px = torch.randn(3, 3, 112, 112, device="cuda")
    ids = torch.randint(2, 512, (3, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    mask[2, 7:] = 0
    labels = torch.randint(2, 512, (3, 20), device="cuda")
    results = {backend: _logits_and_grads(model, backend, px, ids, mask, labels) for backend in ("sdpa", "triton")}
    assert (results["triton"][0] - results["sdpa"][0]).abs().max() < 1e-3
    for name, grad in results["sdpa"][1].items():
        assert (results["triton"][1][name] - grad).abs().max() <= 1e-3 * max(1.0, grad.abs().max().item()), name
    kwargs = dict(max_new_tokens=12, num_beams=3)
    with torch.no_grad():
        beams = model.set_attention_backend("triton").generate(px, ids, mask, **kwargs)
        assert torch.equal(beams, model.set_attention_backend("sdpa").generate(px, ids, mask, **kwargs))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = model.set_attention_backend("triton")(px, ids, mask, labels=labels).logits.float()
    assert (fast - results["sdpa"][0]).abs().max() < 0.1 * results["sdpa"][0].abs().max()


# Triton is the optional `[triton]` extra: without it the model runs on SDPA and the kernels say
# which install they need. Run in a fresh interpreter where `import triton` fails.
_WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is absent
import torch, pali
from pali.nn.attention import resolve_backend
model = pali.PaliModel.from_preset("pali-tiny").eval()
assert resolve_backend("auto", torch.device("cuda")) == "sdpa"
size = model.config.vision.image_size
pixels = torch.zeros(1, 3, size, size)
ids = torch.ones(1, 4, dtype=torch.long)
assert torch.isfinite(model(pixel_values=pixels, input_ids=ids, labels=ids).loss)
q = torch.zeros(1, 1, 4, 8)
try:
    pali.kernels.attention(q, q, q)
except ImportError as err:
    print(err)
"""


def test_without_triton_the_model_runs_and_the_kernels_name_the_extra():
    out = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install 'pali-vlm[triton]'" in out.stdout


@pytest.mark.parametrize("position", [0, 1, 15, 63, 64, 65, 127, 128, 300])
def test_a_decoding_steps_causal_bias_row_equals_the_bucketed_one(position):
    """An eager step's bias (the newest token over all before it) is gathered from a row of
    buckets computed once; it equals the bias bucketed for that position."""
    from pali.kernels import t5_relative_bias

    table = torch.randn(3, 32)
    row = RelativeBias(table, bidirectional=False, max_distance=128).dense(1, position + 1, position)
    expected = t5_relative_bias(table, 1, position + 1, bidirectional=False, max_distance=128, q_offset=position)
    assert row.shape == expected.shape and torch.equal(row, expected)
    other = RelativeBias(table, bidirectional=False, max_distance=20).dense(1, position + 1, position)
    assert torch.equal(other, t5_relative_bias(table, 1, position + 1, bidirectional=False, max_distance=20,
                                               q_offset=position))

