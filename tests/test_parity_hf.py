"""Our towers against Hugging Face transformers loaded with the same random weights (fp32)."""

import pytest
import torch

from pali.testing.hf_reference import hf_clip, hf_mt5, hf_siglip, pali_mt5_from_hf, pali_vit_from_hf

ATOL = 1e-5


def _max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def mt5_pair():
    hf = hf_mt5(seed=0)
    return hf, pali_mt5_from_hf(hf)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_mt5_logits_and_loss_match(mt5_pair, backend):
    hf, ours = mt5_pair
    for m in ours.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    torch.manual_seed(1)
    # 150 tokens exercise the logarithmic buckets and the max-distance clamp (128).
    ids = torch.randint(2, 256, (3, 150))
    mask = torch.ones_like(ids)
    mask[1, 100:] = 0
    mask[2, 7:] = 0
    labels = torch.randint(2, 256, (3, 140))
    labels[2, 20:] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        enc = ours.encode(ours.embed_tokens(ids), mask.bool())
        from pali.models.pali import shift_right

        logits = ours.decode(shift_right(labels, 0, 0), enc, mask.bool())
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert _max_diff(logits, ref.logits) <= ATOL
    assert abs(loss.item() - ref.loss.item()) <= ATOL
    assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr(), "HF re-tied the head"


def test_vit_matches_siglip():
    hf = hf_siglip(seed=2)
    ours = pali_vit_from_hf(hf, "siglip")
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = _max_diff(ours(px), hf(pixel_values=px).last_hidden_state)
    assert diff <= ATOL


def test_vit_matches_clip():
    hf = hf_clip(seed=3)
    ours = pali_vit_from_hf(hf, "clip")
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = hf(pixel_values=px).last_hidden_state
        post = getattr(hf, "vision_model", hf).post_layernorm
        ref = post(hidden[:, 1:])
        diff = _max_diff(ours(px), ref)
    assert diff <= ATOL
