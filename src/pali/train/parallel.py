"""Data-parallel sharding (FSDP2) of a [`pali.PaliModel`][], applied from outside the model.

Each part of the model (vision tower, connector, text stack) names its own units in
``fsdp_units()``: the ViT its blocks, mT5 its encoder and decoder layers and each decoder layer's
cross-attention, the Q-Former its layers. Each becomes its own ``fully_shard`` unit, so only one
block's full weights live on a device at a time; a part without ``fsdp_units`` (a plugin's, the
linear connector) has none. The vision tower's remaining parameters (patch embedding, position
embedding, norms) form one more unit. The root unit holds the rest: the linear projection, the
stacks' bias tables and final norms, and the token embedding ``text.embed`` (used by both the
encoder and the decoder) with the untied ``lm_head``; they are gathered once per step.

Run with ``torchrun --nproc-per-node N``; see ``docs/distributed.md``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


def _units(model: nn.Module) -> list[nn.Module]:
    """The units ``apply_fsdp`` shards before the vision tower and the root, inner ones first:
    what each part's ``fsdp_units()`` names."""
    parts = (model.vision, model.projection, model.text)
    return [unit for part in parts for unit in (part.fsdp_units() if hasattr(part, "fsdp_units") else ())]


def apply_fsdp(
    model: nn.Module,
    mesh=None,
    mixed_precision=None,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard ``model`` in place with ``torch.distributed.fsdp.fully_shard`` and return it.

    ``mesh``: a 1-D ``DeviceMesh`` (default: all ranks of the default process group).
    ``mixed_precision``: a ``torch.distributed.fsdp.MixedPrecisionPolicy``, e.g.
    ``MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)``.
    ``reshard_after_forward``: free each block's gathered weights after its forward (less memory,
    one more all-gather in backward); the root unit always stays gathered until the step ends.

    Freeze parameters ([`pali.train.helpers.freeze`][]) before sharding, and build the optimizer
    after. Units may mix frozen and trainable parameters (FSDP2 in torch 2.13 reduces only the
    gradients that exist; tests/test_fsdp.py trains with half a block frozen).
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not dist.is_initialized():
        raise InputError("apply_fsdp needs torch.distributed initialised (run under torchrun)")
    if mixed_precision is not None and not isinstance(mixed_precision, MixedPrecisionPolicy):
        raise InputError(f"mixed_precision must be a MixedPrecisionPolicy, got {type(mixed_precision).__name__}")
    kwargs = dict(mesh=mesh, mp_policy=mixed_precision or MixedPrecisionPolicy(),
                  reshard_after_forward=reshard_after_forward)
    for unit in _units(model):
        fully_shard(unit, **kwargs)
        # Methods other than forward that run the unit's weights (an attention's ``project_kv``,
        # called on the encoder output before the decoder layers run) gather them like forward.
        for method in getattr(unit, "fsdp_forward_methods", ()):
            register_fsdp_forward_method(unit, method)
    fully_shard(model.vision, **kwargs)
    # The root is used again right after the forward (the loss, then backward): keep it gathered.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU on rank 0, empty on the other ranks.

    Gathers one tensor at a time, so rank 0 needs host memory for the whole model but no device
    holds more than its shard plus one tensor. Load it into an unsharded ``PaliModel`` and call
    ``save_pretrained`` on rank 0.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
