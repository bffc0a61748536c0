"""Layers that read the same input, multiplied as one product: self-attention's ``q``, ``k`` and
``v``, cross-attention's ``k`` and ``v``, a gated MLP's ``wi_0`` and ``wi_1``.

A decoding step multiplies one row (or a few) by every weight of every decoder layer, and at
that size each product's call (the checks, the views, the threads' start) weighs next to its
bytes. Joined, mT5-small's 72 decoder products per step are 48. Measured on a 2-core AMD EPYC
(fp32, 2 threads, medians of interleaved runs, the 8 decoder layers of a step, joint against
the same layout multiplied one by one): 4.28 against 4.32 ms at one row, 5.35 against 5.53 at
4 rows, 7.44 against 7.81 at 8. The joint products' values equal the separate ones bit for bit
there (1 to 206 rows): ``pali.nn.gemv``'s kernels reduce each output over the same inputs in
the same order, whatever rows lie beside it in the weight.

A joint product needs the weights one after the other in one block of memory. ``adjoin`` lays
them out so (mT5's ``start_decoding`` asks on a CPU, at every generation; after the first it
only checks). The parameters stay the same ``Parameter`` objects; only their ``.data`` becomes
a view of the block, so state dicts, optimizers, checkpoints and ``load_state_dict`` see what
they saw before. A weight mapped in place from a file becomes ordinary memory (the same bytes;
the file's mapping goes with its last view, so the process holds no more than before). Weights
of ``LARGE`` elements or more together are left where they are: their products are long enough
that a call's cost is lost in them, and moving gigabytes would be felt.

``joint_linear`` checks at every call that the layers are still plain (no hooks, no adapter, no
bias, no gradient, fp32 on a CPU, not being compiled) and adjacent; otherwise it multiplies
them one by one through ``inference_linear``, so a model moved, cast, wrapped or reloaded after
``adjoin`` stays exact.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .gemv import LARGE, _global_hooks, inference_linear, linear_rows


def joint_linear(x: torch.Tensor, layers: Sequence[nn.Module]) -> tuple[torch.Tensor, ...]:
    """``tuple(layer(x) for layer in layers)`` under ``no_grad``: one product when ``adjoin``
    laid the layers' weights out together (see the module docstring)."""
    weight = None if torch.is_grad_enabled() or torch.compiler.is_compiling() else _joint_weight(layers)
    if weight is None:
        return tuple(inference_linear(x, layer) for layer in layers)
    return linear_rows(x, weight, None).split([layer.out_features for layer in layers], -1)


def adjoin(layers: Sequence[nn.Module]) -> bool:
    """Lay the weights of ``layers`` (bias-free fp32 ``nn.Linear`` s on a CPU reading the same
    features, fewer than ``LARGE`` elements together) out one after the other in one block, so
    that ``joint_linear`` multiplies them as one. True when they are laid out (already or now)."""
    if len(layers) < 2 or not all(type(layer) is nn.Linear and layer.bias is None for layer in layers):
        return False
    weights = [layer.weight for layer in layers]
    if _adjacent(weights) is not None:
        return True
    features = weights[0].shape[1]
    if not all(_plain(weight, features) for weight in weights) or sum(w.numel() for w in weights) >= LARGE:
        return False
    # A normal tensor even inside ``generate``'s inference mode: the model may be trained later.
    with torch.inference_mode(False), torch.no_grad():
        block = torch.cat([weight.detach() for weight in weights])
    for weight, part in zip(weights, block.split([weight.shape[0] for weight in weights])):
        weight.data = part
    return True


def _joint_weight(layers: Sequence[nn.Module]) -> torch.Tensor | None:
    """The layers' weights as one ``[sum of out_features, in_features]`` view when each layer is
    joinable and unhooked and their weights lie one right after the other; else None. Written
    for speed: a decoding step asks 16 times (mT5-small)."""
    if _global_hooks():
        return None
    for layer in layers:
        if (
            type(layer) is not nn.Linear
            or layer._forward_hooks
            or layer._forward_pre_hooks
            or layer._parameters["bias"] is not None
        ):
            return None
    return _adjacent([layer._parameters["weight"] for layer in layers])


def _plain(weight: torch.Tensor, features: int) -> bool:
    """A contiguous fp32 CPU ``Parameter`` (not a quantized or sharded one) ``features`` wide."""
    return (
        type(weight) is nn.Parameter
        and weight.dtype == torch.float32
        and weight.is_cpu
        and weight.shape[1] == features
        and weight.is_contiguous()
    )


def _adjacent(weights: list[torch.Tensor]) -> torch.Tensor | None:
    """One view over ``weights`` when they are plain and of one width, each starting where the
    one before ends in the first one's storage; else None."""
    first = weights[0]
    features, start, rows, size = first.shape[1], first.data_ptr(), 0, first.element_size()
    for weight in weights:
        if not _plain(weight, features) or weight.data_ptr() != start + rows * features * size:
            return None
        rows += weight.shape[0]
    storage = first.untyped_storage()  # the others lie in it: they start inside it and end by its end
    if storage.data_ptr() + storage.nbytes() < start + rows * features * size:
        return None
    return first.as_strided((rows, features), (features, 1))  # called under no_grad only
