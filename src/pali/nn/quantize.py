"""Weights in int8 or bf16 for decoding on a CPU: what ``pali.quantize(model, "int8")`` swaps in.

A decoding step is bound by the bytes of weights it reads (mT5's output layer alone is half a
gigabyte in fp32), so fewer bytes per weight is the speed. Two formats; the residual stream,
norms, softmax and logits stay in the model's dtype:

* ``"int8"``: symmetric int8 weights per output row (scale = max |w| / 127). The output layer
  runs PyTorch's own fbgemm kernel ``quantized.linear_dynamic``, which quantizes each call's
  activations to 8 bits on the fly and returns fp32 (what CTranslate2's int8 does); the
  decoder layers run weight-only ``aten._weight_int8pack_mm`` with bf16 activations (as fast
  at their size; on the bundled demo's held-out set, dynamic int8 everywhere lost 1 point of
  German caption accuracy, 1 of detection hits and 0.5 of IoU, this mix lost none). Measured
  on a 2-core AMD EPYC with avx512_vnni, ``[rows, 512] x [250112, 512]^T`` at 2 threads, median
  of 15 (rows 1 / 4 / 8): 19.8 / 20.0 / 21.4 ms, against 38.5 / 39.9 / 60.0 ms for
  ``aten._weight_int8pack_mm`` with bf16 activations (with fp32 activations that kernel took
  46-87 ms for one row). Activations use the full 8-bit range where the CPU has VNNI
  (``reduce_range`` only where it does not, to avoid the int16 saturation of older AVX2 paths).
* ``"bf16"``: weights stored in bf16, ``F.linear`` in bf16 (fast where the CPU has bf16
  instructions; on an AVX2-only CPU it was 10x slower than fp32).

Only the layers a decoding step reads are converted (``pali.quantize`` picks them). A quantized
model is for inference on a CPU: its int8 weights are packed for the kernel, not a checkpoint.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

FORMATS = ("int8", "bf16")


def has_bf16_instructions() -> bool:
    """Whether this CPU multiplies bf16 natively (``avx512_bf16`` or AMX); without them a bf16
    matmul is emulated, and was 10x slower than fp32 on an AVX2-only CPU."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _reduce_range() -> bool:
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (is_vnni is not None and is_vnni())


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, one scale per output feature.

    ``activations="int8"``: fbgemm's dynamic kernel (activations quantized per call, fp32 out),
    the fastest for a large weight. ``activations="bf16"``: weight-only int8 through
    ``aten._weight_int8pack_mm`` (bf16 in and out), as fast for small weights and closer to fp32
    where activations have outliers (T5's feed-forward output).
    """

    def __init__(self, linear: nn.Linear, activations: str = "int8") -> None:
        super().__init__()
        if linear.weight.device.type != "cpu":
            raise InputError(f"int8 weights run on the CPU; this layer is on {linear.weight.device}")
        if activations not in ("int8", "bf16"):
            raise InputError(f"activations must be 'int8' or 'bf16', got {activations!r}")
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # _weight_int8pack_mm reads past the row for in_features not a multiple of 16 (torch 2.13:
        # NaN/inf for 24, or a crash): such layers take the dynamic kernel.
        self.activations = activations if linear.in_features % 16 == 0 else "int8"
        bias = None if linear.bias is None else linear.bias.detach().float()
        if self.activations == "bf16":
            self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale.to(torch.bfloat16))
            self.register_buffer("bias", bias)
            return
        with warnings.catch_warnings():  # quantized tensors are how this kernel takes its weights
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qweight = torch.quantize_per_channel(
                w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
            )
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self.reduce_range = _reduce_range()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.activations == "bf16":
            out = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8, self.scale)
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        else:
            out = torch.ops.quantized.linear_dynamic(rows.float(), self.packed, self.reduce_range)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the int8 weights and their per-row scales: what one call reads. Registered
        buffers are counted by whoever walks them; the packed form is counted here."""
        return 0 if self.activations == "bf16" else self.in_features * self.out_features + 8 * self.out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, "
                f"{self.activations} activations")


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


def convert_linear(linear: nn.Linear, fmt: str, **options) -> nn.Module:
    """``linear`` with its weights in ``fmt`` (``"int8"`` or ``"bf16"``); ``options`` go to its class."""
    if fmt not in _CONVERTERS:
        raise InputError(f"unknown weight format {fmt!r}; choose from {', '.join(FORMATS)}")
    return _CONVERTERS[fmt](linear, **options)


def quantize_linears(root: nn.Module, fmt: str, **options) -> int:
    """Replace every ``nn.Linear`` inside ``root`` by its ``fmt`` form, in place; returns how many."""
    replaced = 0
    for module in list(root.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, convert_linear(child, fmt, **options))
                replaced += 1
    return replaced
