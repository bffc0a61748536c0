"""Weights in int8 or bf16 for decoding on a CPU: what ``pali.quantize(model, "int8")`` swaps in.

A decoding step is bound by the bytes of weights it reads (mT5's output layer alone is half a
gigabyte in fp32), so fewer bytes per weight is the speed. Two formats, both weight-only (the
residual stream, norms, softmax and logits stay in the model's dtype):

* ``"int8"``: symmetric int8 per output row (scale = max |w| / 127), multiplied by PyTorch's
  own CPU kernel ``aten._weight_int8pack_mm`` with bf16 activations. Measured on a 2-core AMD
  EPYC with avx512_bf16 (``[1, 512] x [250112, 512]^T``, 2 threads): ~7-16 ms, against ~18 ms for
  the fastest fp32 layout; the same kernel with fp32 activations took 46-87 ms, which is why
  the activations are cast to bf16 for the matmul.
* ``"bf16"``: the weights stored in bf16, ``F.linear`` in bf16 (fast where the CPU has bf16
  instructions; on an AVX2-only CPU it was 10x slower than fp32).

Only the layers a decoding step reads are converted by default: every ``nn.Linear`` of the text
decoder and the output layer. A quantized model is for inference: its state dict holds the
quantized tensors, not a checkpoint to save.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

FORMATS = ("int8", "bf16")


class Int8Linear(nn.Module):
    """A bias-optional linear layer with int8 weights and one scale per output feature."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if rows.device.type == "cpu":
            out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale)
        else:  # no such kernel for this device: dequantize (same numbers, no speed-up)
            out = F.linear(rows, self.weight.to(torch.bfloat16) * self.scale[:, None])
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


class Bf16Linear(nn.Module):
    """A linear layer whose weights (and matmul) are bf16; input and output keep their dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16"


_CONVERTERS = {"int8": Int8Linear, "bf16": Bf16Linear}


def convert_linear(linear: nn.Linear, fmt: str) -> nn.Module:
    """``linear`` with its weights in ``fmt`` (``"int8"`` or ``"bf16"``)."""
    if fmt not in _CONVERTERS:
        raise InputError(f"unknown weight format {fmt!r}; choose from {', '.join(FORMATS)}")
    return _CONVERTERS[fmt](linear)


def quantize_linears(root: nn.Module, fmt: str) -> int:
    """Replace every ``nn.Linear`` inside ``root`` by its ``fmt`` form, in place; returns how many."""
    replaced = 0
    for module in list(root.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, convert_linear(child, fmt))
                replaced += 1
    return replaced
