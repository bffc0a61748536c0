"""The whole PaliModel against a hand-assembled Hugging Face reference:
SigLIP tower -> linear -> MT5ForConditionalGeneration(inputs_embeds=concat(visual, prompt))."""

import pytest
import torch

from pali.testing.checkpoints import apply_keymap
from pali.testing.hf_reference import hf_mt5, hf_siglip
from pali import PaliConfig, PaliModel
from pali.convert import hf as hf_maps

ATOL = 1e-5


class Reference(torch.nn.Module):
    def __init__(self, vision, text, projection):
        super().__init__()
        self.vision, self.text, self.projection = vision, text, projection

    def inputs(self, pixel_values, input_ids, attention_mask):
        visual = self.projection(self.vision(pixel_values=pixel_values).last_hidden_state)
        embeds = torch.cat([visual, self.text.shared(input_ids)], dim=1)
        mask = torch.cat([torch.ones(visual.shape[:2], dtype=attention_mask.dtype), attention_mask], dim=1)
        return dict(inputs_embeds=embeds, attention_mask=mask)


@pytest.fixture(scope="module")
def pair():
    vision, text = hf_siglip(seed=11), hf_mt5(seed=12)
    torch.manual_seed(13)
    projection = torch.nn.Linear(32, 32)
    ref = Reference(vision, text, projection).eval()
    config = PaliConfig(
        vision=hf_maps.siglip_vision_config(vision.config.to_dict()),
        text=hf_maps.mt5_config(text.config.to_dict()),
    )
    ours = PaliModel(config).eval()
    state = {f"vision.{k}": v for k, v in apply_keymap(hf_maps.SIGLIP_VISION, vision.state_dict().items())}
    state |= {f"text.{k}": v for k, v in apply_keymap(hf_maps.MT5, text.state_dict().items())}
    state |= {f"projection.{k}": v for k, v in projection.state_dict().items()}
    ours.load_state_dict(state)
    return ref, ours


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(2, 256, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return px, ids, mask


def test_logits_and_loss_match(pair):
    ref, ours = pair
    px, ids, mask = _batch()
    labels = torch.randint(2, 256, (3, 7))
    labels[1, 4:] = -100
    with torch.no_grad():
        expected = ref.text(**ref.inputs(px, ids, mask), labels=labels)
        got = ours(px, ids, mask, labels=labels)
    print(f"logits max abs diff {(got.logits - expected.logits).abs().max().item():.2e}")
    assert (got.logits - expected.logits).abs().max() <= ATOL
    assert abs(got.loss.item() - expected.loss.item()) <= ATOL


def _hf_generate(ref, px, ids, mask, **kwargs):
    with torch.no_grad():
        out = ref.text.generate(**ref.inputs(px, ids, mask), do_sample=False, **kwargs)
    return out[:, 1:]  # HF keeps the decoder start token


def _frequent_token(ours, px, ids, mask):
    """A token greedy decoding emits early, used as eos so the eos paths really run."""
    tokens = ours.generate(px, ids, mask, max_new_tokens=6, eos_token_id=-1)
    return int(tokens[0, 2])


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_transformers(pair, use_cache):
    ref, ours = pair
    px, ids, mask = _batch(1)
    for eos in (1, _frequent_token(ours, px, ids, mask)):
        expected = _hf_generate(ref, px, ids, mask, max_new_tokens=10, num_beams=1, eos_token_id=eos)
        got = ours.generate(px, ids, mask, max_new_tokens=10, eos_token_id=eos, use_cache=use_cache)
        assert torch.equal(got, expected), (eos, got, expected)


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (0.6, True), (2.0, False)])
def test_beam_search_matches_transformers(pair, length_penalty, early_stopping):
    ref, ours = pair
    px, ids, mask = _batch(2)
    for eos in (1, _frequent_token(ours, px, ids, mask)):
        kwargs = dict(max_new_tokens=8, num_beams=4, eos_token_id=eos, length_penalty=length_penalty,
                      early_stopping=early_stopping)
        expected = _hf_generate(ref, px, ids, mask, **kwargs)
        got = ours.generate(px, ids, mask, **kwargs)
        assert torch.equal(got, expected), (eos, got, expected)
