"""FSDP2 on CPU: 2 gloo processes, each with half of a fixed global batch, match one process
training on the whole batch (a few AdamW steps, fp32), and the full state dict gathers on rank 0."""

import gc

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from toy_tower import ToyTowerConfig, register

from pali import PaliConfig, PaliModel, QFormerConfig, get_config
from pali.errors import InputError
from pali.train.helpers import freeze

STEPS = 3


def _model(policy, frozen=()):
    torch.manual_seed(0)
    model = PaliModel.from_preset("pali-tiny").train()
    freeze(model, policy, frozen=frozen)
    return model


def _global_batch():
    g = torch.Generator().manual_seed(1)
    px = torch.randn(4, 3, 32, 32, generator=g)
    ids = torch.randint(2, 256, (4, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 3:] = 0
    # No ignored labels: every row has as many tokens, so the mean of the two halves' mean
    # losses is the global mean loss and averaged gradients match the single-process ones.
    labels = torch.randint(2, 256, (4, 5), generator=g)
    return px, ids, mask, labels


def _train(model, rows):
    """AdamW steps; returns the first step's gradients (full tensors), before any update."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    px, ids, mask, labels = (t[rows] for t in _global_batch())
    first = None
    for _ in range(STEPS):
        opt.zero_grad()
        model(px, ids, mask, labels=labels).loss.backward()
        if first is None:
            full = (getattr(p.grad, "full_tensor", lambda g=p.grad: g)() for p in model.parameters() if p.grad is not None)
            names = [n for n, p in model.named_parameters() if p.grad is not None]
            first = dict(zip(names, full))
        opt.step()
    return first


def _shard_and_train(rank, world, out, policy, frozen):
    from pali.train.parallel import apply_fsdp, full_state_dict

    model = apply_fsdp(_model(policy, frozen))
    half = 4 // world
    grads = _train(model, slice(rank * half, (rank + 1) * half))
    state = full_state_dict(model)
    if rank == 0:
        torch.save((state, grads), out)
    else:
        assert state == {}


def _worker(rank, world, init_file, out, policy, frozen):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _shard_and_train(rank, world, out, policy, frozen)
        # Teardown in order, on both ranks: the sharded model (and any gloo work its FSDP state
        # still holds) is freed while the interpreter is whole, and neither rank destroys its
        # group while the other may still be in a collective. A CI run once lost a rank to
        # SIGABRT ("terminate called without an active exception") at this point.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy, frozen",
    [
        ("vision", ()),  # PaLI's default: a frozen tower
        ("none", ["text.encoder.layers.0.mlp.wo.*"]),  # a unit mixing frozen and trainable
        ("projection+encoder", ()),  # the root unit mixing frozen (embed, lm_head) and trainable
    ],
)
def test_fsdp_two_processes_match_one(tmp_path, policy, frozen):
    out = tmp_path / "state.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out), policy, frozen), nprocs=2, join=True)
    sharded, sharded_grads = torch.load(out)
    reference = _model(policy, frozen)
    grads = _train(reference, slice(0, 4))
    expected = reference.state_dict()
    assert sharded.keys() == expected.keys()
    # Gradients first: AdamW is blind to their scale (a sum instead of a mean across ranks would
    # pass the parameter check below), so compare them before any step.
    assert sharded_grads.keys() == grads.keys()
    assert max((sharded_grads[k] - grads[k]).abs().max().item() for k in grads) <= 1e-6
    # The ViT key bias adds the same q.b_k to every score of a query, which softmax ignores: its
    # exact gradient is 0, so AdamW moves it by rounding noise alone (~lr per step either way).
    compared = [k for k in expected if not k.endswith("attn.k.bias")]
    diffs = torch.cat([(sharded[k] - expected[k]).abs().flatten() for k in compared])
    # fp32: FSDP's reduce-scatter and the half-size matmuls round differently from one process;
    # AdamW's m / sqrt(v) turns that into up to ~lr-sized steps for the rare elements whose
    # gradient is ~0 (measured: one element at 6e-6, all others <= 6e-7; a one-process run
    # accumulating the two halves differs from the whole-batch one by 6e-7 too; runs vary, up to
    # 1.1e-5 seen).
    print(f"max abs param diff {diffs.max().item():.2e}")
    assert diffs.max() <= 5e-5
    assert (diffs > 1e-6).float().mean() <= 1e-4
    initial = _model(policy, frozen).state_dict()
    moved = {k for k in expected if not torch.equal(expected[k], initial[k])}
    assert any(k.startswith("text.encoder.layers.") for k in moved)
    assert any(k.startswith("vision.") for k in moved) == (policy == "none")
    frozen_names = {n for n, p in reference.named_parameters() if not p.requires_grad}
    assert all(torch.equal(sharded[k], initial[k]) for k in frozen_names)


def test_apply_fsdp_needs_a_process_group():
    from pali.train.parallel import apply_fsdp

    assert not dist.is_initialized()
    with pytest.raises(InputError, match="torch.distributed"):
        apply_fsdp(_model("vision"))



# -- units named by the towers: a plugin vision tower and the Q-Former ----------------------------


def _plugin_model() -> PaliModel:
    register()
    torch.manual_seed(0)
    connector = QFormerConfig(num_query_tokens=4, hidden_size=16, depth=2, num_heads=2, mlp_dim=32)
    config = PaliConfig(vision=ToyTowerConfig(), text=get_config("mt5-tiny"), connector=connector)
    return PaliModel(config).train()


def _plugin_loss(model: PaliModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    px = torch.randn(2, 3, 16, 16, generator=g)
    ids, labels = torch.randint(2, 256, (2, 5), generator=g), torch.randint(2, 256, (2, 4), generator=g)
    return model(px, ids, labels=labels).loss


def _plugin_worker(rank, init_file, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=1)
    try:
        from torch.distributed.fsdp import FSDPModule

        from pali.train.parallel import apply_fsdp

        model = apply_fsdp(_plugin_model())
        units = {
            "vision.stages": list(model.vision.stages), "projection.layers": list(model.projection.layers),
            "text.encoder.layers": list(model.text.encoder.layers),
            "text.decoder cross_attn": [layer.cross_attn for layer in model.text.decoder.layers],
        }
        sharded = {name: all(isinstance(u, FSDPModule) for u in modules) for name, modules in units.items()}
        loss = _plugin_loss(model)
        loss.backward()
        grad = model.vision.stages[0].weight.grad.full_tensor()
        torch.save((sharded, loss.detach(), grad), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_towers_name_their_fsdp_units(tmp_path):
    """apply_fsdp shards what each part's fsdp_units() names: a plugin tower without ``blocks``,
    the Q-Former's layers, mT5's layers and cross-attention; training matches the unsharded model."""
    out = tmp_path / "out.pt"
    mp.spawn(_plugin_worker, args=(str(tmp_path / "init"), str(out)), nprocs=1, join=True)
    sharded, loss, grad = torch.load(out)
    assert sharded == dict.fromkeys(sharded, True)
    reference = _plugin_model()
    expected = _plugin_loss(reference)
    expected.backward()
    assert torch.allclose(loss, expected.detach(), atol=1e-6)
    assert torch.allclose(grad, reference.vision.stages[0].weight.grad, atol=1e-6)
