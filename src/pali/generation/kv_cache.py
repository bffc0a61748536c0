"""The decoder's KV cache: every key/value it attends to during one generation, preallocated.

Self-attention keys/values live in one ``[B, H, max_len, D]`` buffer per layer that each step writes
at its positions. A compiled step (position a 0-d tensor) writes by index and attends over the
whole buffer: the decoder asks for causal attention from the step's position, which hides the
slots not written yet, so shapes never change from token to token and the step compiles once. An
eager step (position an int) writes a slice and attends over the filled prefix only: fewer keys,
and a one-token step needs no causal mask. Either way nothing is allocated per token.
Cross-attention keys/values are projected once per generation and kept here too, with the
encoder's padding mask checked once. ``generate`` releases the buffers when it ends
(``release``), so a finished generation holds no memory. The cache stores; it does not decide
how attention is called.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..nn.attention import KeyPadding


class KVCache(nn.Module):
    """Preallocated decoder keys/values (never in a state dict).

    The self-attention buffers are separate tensors, one per layer, not views of one stacked
    tensor: a compiled step writes each in place. Written through views of one base, the
    graph rebuilt the whole stack at every layer's write (at batch 8, eight layers of copies
    per step).
    """

    def __init__(self) -> None:
        super().__init__()
        for name in ("cross_k", "cross_v"):
            self.register_buffer(name, None, persistent=False)
        self.k: list[torch.Tensor] | None = None
        self.v: list[torch.Tensor] | None = None
        self.enc_mask: KeyPadding | None = None

    @property
    def allocated(self) -> bool:
        return self.k is not None

    @property
    def max_len(self) -> int:
        return self.k[0].shape[-2]

    def allocate(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int, *, dtype, device) -> None:
        """Buffers for ``max_len`` positions, reusing the current ones when they already fit.

        Reused slots need no clearing: a step never attends to a slot it has not written. Buffers
        made under ``torch.inference_mode`` (``pali.run``) cannot be written outside it, so a later
        generation under ``no_grad`` gets new ones.
        """
        shape = (batch, heads, max_len, head_dim)
        k = None if self.k is None else self.k[0]
        stale = k is None or len(self.k) != layers or (k.is_inference() and not torch.is_inference_mode_enabled())
        if stale or tuple(k.shape) != shape or k.dtype != dtype or k.device != torch.device(device):
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    def release(self) -> None:
        """Drop every buffer (the end of a generation): the memory goes back at once, not when the
        model goes. The next ``allocate`` makes new ones."""
        for name in ("k", "v", "cross_k", "cross_v", "enc_mask"):
            setattr(self, name, None)

    def set_cross(self, cross: list[tuple[torch.Tensor, torch.Tensor]], enc_mask: torch.Tensor | None) -> None:
        """Keep every layer's cross-attention keys/values (projected once) and the encoder mask,
        checked once here for padding (``KeyPadding``: no per-layer, per-token host read)."""
        self.cross_k = torch.stack([k for k, _ in cross])
        self.cross_v = torch.stack([v for _, v in cross])
        self.enc_mask = KeyPadding.of(enc_mask, self.cross_k.dtype)

    def cross_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.cross_k.unbind(0), self.cross_v.unbind(0)))

    def check_room(self, start: int, steps: int) -> None:
        if start < 0 or start + steps > self.max_len:
            raise InputError(f"KV cache holds {self.max_len} positions; step needs {start} to {start + steps}")

    def write(
        self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[B, H, t, D]`` at positions ``start .. start + t``; return the layer's
        keys/values to attend over: the filled prefix ``[B, H, start + t, D]`` for an int ``start``,
        the whole buffers ``[B, H, max_len, D]`` for a tensor one (a compiled step)."""
        keys, values = self.k[layer], self.v[layer]
        if isinstance(start, int):
            end = start + k.shape[-2]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            return keys[:, :, :end], values[:, :, :end]
        positions = torch.arange(k.shape[-2], device=k.device) + start
        keys[:, :, positions] = k  # an index_put_: written in place by a compiled step
        values[:, :, positions] = v
        return keys, values

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Keep batch rows ``index`` (the hypotheses beam search keeps), in place so the buffers
        stay the same tensors. Only the first ``length`` positions (default all) are copied.

        Cross-attention keys/values are not touched: beam search never moves a row to another
        batch item, and the beams of one item share its encoder rows.
        """
        filled = slice(0, self.max_len if length is None else length)
        for buffer in (*self.k, *self.v):
            buffer[:, :, filled] = buffer[:, :, filled].index_select(0, index)
