"""The first maximum of each row of logits, fast on a CPU, with suppressed ids left out.

Greedy decoding chooses ``logits.argmax(-1)``; PyTorch's CPU argmax reads a row on one thread
and without vector instructions: 135 us for one row of mT5's 250112 logits, 0.55 ms for 8,
about 1% of a greedy step (2-core AMD EPYC, 2 threads). ``first_argmax`` returns the same
index in a fraction of that.
"""

from __future__ import annotations

import functools

import torch


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)`` of ``[rows, V]`` logits: the same index (the first maximum, NaN
    counting as the largest), found in blocks on a CPU.

    The maximum of each block (``amax``: vectorized, parallel) names the first block holding the
    row's maximum, and argmax runs over that one block only: 20 us for a row of 250112.
    """
    rows, vocab = logits.shape
    blocks = argmax_blocks(vocab)
    if blocks == 1 or not logits.is_cpu:
        return logits.argmax(-1)
    width = vocab // blocks
    view = logits.reshape(rows, blocks, width)
    block = view.amax(-1).argmax(-1)
    return block * width + view[torch.arange(rows, device=logits.device), block].argmax(-1)


def masked_first_argmax(logits: torch.Tensor, suppressed: torch.Tensor | None) -> torch.Tensor:
    """``first_argmax`` of ``[rows, V]`` logits with the ids in ``suppressed`` (an index tensor)
    never chosen, unless every id is."""
    if suppressed is not None:
        logits = logits.index_fill(-1, suppressed, float("-inf"))
    return first_argmax(logits)


@functools.lru_cache(maxsize=None)
def argmax_blocks(vocab: int) -> int:
    """How many blocks ``first_argmax`` splits a row of ``vocab`` logits into: the largest divisor
    up to 1024 (977 blocks of 256 for mT5); 1 (no split) for a small vocabulary or one that
    has no divisor from 16 to 1024."""
    if vocab < 4096:
        return 1
    blocks = next(d for d in range(1024, 0, -1) if vocab % d == 0)
    return blocks if blocks >= 16 else 1
