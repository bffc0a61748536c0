"""Fine-tuning: gradient checkpointing, freezing policies, mixed precision, LoRA through peft."""

import pytest
import torch

from pali import PaliModel
from pali.errors import InputError
from pali.train.helpers import POLICIES, freeze, lora_target_modules, summarize

peft = pytest.importorskip("peft")


def _model(seed=0):
    torch.manual_seed(seed)
    return PaliModel.from_preset("pali-tiny").train()


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(2, 256, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # prompt padding: the SDPA padding-feature path runs
    labels = torch.tensor([[5, 6, 7, 1], [8, 9, 1, -100]])
    return dict(pixel_values=px, input_ids=ids, attention_mask=mask, labels=labels)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _block_calls(model):
    """Forward calls per tower's blocks (pre-hooks: a recomputation may stop early, before the forward returns)."""
    calls = {"vision": 0, "encoder": 0, "decoder": 0}
    blocks = {"vision": model.vision.blocks, "encoder": model.text.encoder.layers, "decoder": model.text.decoder.layers}
    for tower, layers in blocks.items():
        for layer in layers:
            layer.register_forward_pre_hook(lambda *_, tower=tower: calls.__setitem__(tower, calls[tower] + 1))
    return calls


def test_gradient_checkpointing_changes_nothing_and_is_per_tower():
    model, batch = _model(), _batch()
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    calls = _block_calls(model)
    model.gradient_checkpointing(True, vision=False)
    loss, grads = _loss_and_grads(model, batch)
    assert calls == {"vision": 2, "encoder": 4, "decoder": 4}  # 2 layers each; text ones recomputed
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert (g - ref_grads[name]).abs().max() <= 1e-6, name
    model.gradient_checkpointing(False)
    assert not any((model.vision.gradient_checkpointing, model.text.encoder.gradient_checkpointing,
                    model.text.decoder.gradient_checkpointing))


def test_lora_gets_gradients_with_checkpointing():
    """The transformers pitfall: reentrant checkpointing + frozen embeddings + LoRA = no gradients."""
    model = _model()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=lora_target_modules(mlp=True)))
    batch = _batch()
    _, ref = _loss_and_grads(lora, batch)
    model.gradient_checkpointing(True)
    _, grads = _loss_and_grads(lora, batch)
    lora_b = [n for n, p in lora.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * (4 + 3) + 2 * (2 * 4 + 3)  # encoder / decoder layers: attention + MLP
    assert set(grads) == {n for n, p in lora.named_parameters() if p.requires_grad}  # LoRA only
    for name in lora_b:  # lora_B starts at zero, so its gradient is the informative one
        assert grads[name].abs().sum() > 0, name
        assert (grads[name] - ref[name]).abs().max() <= 1e-6, name


@pytest.mark.parametrize(
    "policy, trainable_parts",
    [
        ("vision", {"projection", "text.embed", "text.encoder", "text.decoder", "text.lm_head"}),
        ("none", {"vision", "projection", "text.embed", "text.encoder", "text.decoder", "text.lm_head"}),
        ("projection+encoder", {"projection", "text.encoder"}),
        ("projection", {"projection"}),
    ],
)
def test_freezing_policies(policy, trainable_parts):
    model = _model()
    summary = freeze(model, policy)
    assert {part for part, (t, n) in summary.parts.items() if t} == trainable_parts
    assert all(t in (0, n) for t, n in summary.parts.values())
    assert summary.trainable == model.num_parameters(trainable_only=True)
    assert summary.total == model.num_parameters()
    assert "total:" in str(summary)
    _, grads = _loss_and_grads(model, _batch())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(grads)


def test_freeze_patterns_glob_and_regex_frozen_wins():
    model = _model()
    summary = freeze(
        model, "projection",
        trainable=["text.decoder.*", r"re:text\.encoder\.layers\.1\..*"],
        frozen=["*.relpos_bias", "text.decoder.layers.0.*"],
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text.encoder.layers.1.mlp.wo.weight" in trainable
    assert "text.encoder.layers.0.mlp.wo.weight" not in trainable
    assert "text.decoder.layers.1.cross_attn.q.weight" in trainable
    assert not any(n.startswith("text.decoder.layers.0.") or n.endswith("relpos_bias") for n in trainable)
    assert summary == summarize(model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(policy="text"), "unknown freezing policy 'text'"),
        (dict(trainable=["text.encoderr.*"]), "trainable pattern 'text.encoderr.\\*' matches no parameter"),
        (dict(frozen=["re:(unclosed"]), "bad regex"),
        (dict(trainable="text.*"), "list of patterns"),
    ],
)
def test_freeze_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        freeze(_model(), **kwargs)


def test_lora_target_modules_bad_input():
    with pytest.raises(InputError, match="unknown LoRA"):
        lora_target_modules(("text",))
    with pytest.raises(InputError, match="selects nothing"):
        lora_target_modules((), projection=False)
    assert set(POLICIES) == {"none", "vision", "projection+encoder", "projection"}


def test_bf16_autocast_forward_backward():
    model, batch = _model(), _batch()
    ref_loss, _ = _loss_and_grads(model, batch)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert abs(out.loss.item() - ref_loss.item()) < 0.05
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_pure_bf16_training_step():
    model, batch = _model().to(torch.bfloat16), _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def _overflowing(model):
    """Scale mT5's ``wo`` so its outputs pass 65504: naive fp16 turns them into inf."""
    with torch.no_grad():
        for layer in model.text.encoder.layers:
            layer.mlp.wo.weight.mul_(40000.0)
    return model


def test_fp16_training_step_with_loss_scaling():
    """Pure fp16 weights: forward + backward with a dynamic loss scale gives finite gradients."""
    batch = _batch()
    model = _overflowing(_model())
    peaks = []
    hook = model.text.encoder.layers[0].mlp.register_forward_hook(lambda m, i, o: peaks.append(o.abs().max().item()))
    model(**batch)
    hook.remove()
    assert peaks[0] > 65504, "the input must overflow naive fp16"
    model.half()
    batch["pixel_values"] = batch["pixel_values"].half()
    scale = 2.0**16
    for _ in range(20):  # GradScaler's rule: halve the scale while the scaled gradients overflow
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        (loss * scale).backward()
        if all(torch.isfinite(p.grad).all() for p in model.parameters()):
            break
        scale /= 2
    grads = [p.grad.float() / scale for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_fp16_autocast_with_grad_scaler():
    """fp32 master weights, fp16 autocast and torch's GradScaler: finite loss and a real step."""
    model, batch = _overflowing(_model()), _batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(**batch).loss
    assert torch.isfinite(loss)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() > 0
    for _ in range(4):  # a skipped step (overflow) lowers the scale; some step must go through
        if any(not torch.equal(p, before[n]) for n, p in model.named_parameters()):
            break
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_guard_keeps_lora_on_wo():
    """The fp16 ``wo`` guard runs the module (not a bare matmul), so a LoRA adapter on ``wo`` counts."""
    model = _model().eval()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=r".*\.mlp\.wo"))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    batch = _batch()
    batch["pixel_values"] = batch["pixel_values"].half()
    lora.half()
    with torch.no_grad():
        with_adapter = lora(**batch).logits
        with lora.disable_adapter():
            without = lora(**batch).logits
    assert (with_adapter - without).abs().max() > 1e-2


def test_lora_trains_merges_and_round_trips(tmp_path):
    model, batch = _model(), _batch()
    config = peft.LoraConfig(
        r=4, lora_alpha=8,
        target_modules=lora_target_modules(("vision", "encoder", "decoder"), mlp=True, projection=True),
    )
    lora = peft.get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = lora(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    lora.eval()
    with torch.no_grad():
        unmerged = lora(**batch).logits
        merged_model = lora.merge_and_unload()
        assert type(merged_model) is PaliModel
        assert not any("lora" in n for n, _ in merged_model.named_parameters())
        merged = merged_model(**batch).logits
    assert (merged - unmerged).abs().max() <= 1e-5
    merged_model.save_pretrained(tmp_path / "merged")
    reloaded = PaliModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, merged)
