"""Weights for decoding on a CPU (int8, bf16, or fp32 packed): what ``pali.quantize`` swaps in.

A decoding step is bound by the bytes of weights it reads (mT5's output layer alone is half a
gigabyte in fp32), and by how well the kernel streams them. Three formats, as CTranslate2's
compute types; the residual stream, norms, softmax and logits stay in the model's dtype:

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
* ``"bf16"``: weights rounded to bf16 and packed for oneDNN (``PackedLinear``), matmuls in
  bf16 (fast where the CPU has bf16 instructions; on an AVX2-only CPU a bf16 matmul was 10x
  slower than fp32).
* ``"fp32"``: the same fp32 weights, packed for oneDNN (``PackedLinear``): no rounding of the
  weights, the fastest fp32 kernels measured (results within fp32 rounding of ``F.linear``).

Only the layers a decoding step reads are converted (``pali.quantize`` picks them). A converted
model is for inference on a CPU: its weights are packed for the kernel, not a checkpoint.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from . import gemv
from .hugepages import collapse

FORMATS = ("int8", "bf16", "fp32")
#: The rows per call oneDNN's blocked layout is chosen for (a decoding step's batch x beams).
PACK_FOR_ROWS = 8


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


class PackedLinear(nn.Module):
    """A linear layer whose weight oneDNN reordered once into its blocked layout, in ``dtype``
    (fp32: the same weights; bf16: rounded); input and output keep their dtype.

    A plain weight makes oneDNN reorder it on every call or take a slower kernel; packed once,
    mT5's ``[250112, 512]`` output layer took 7 ms for one row in fp32 (the split product of a
    plain weight: 9-13 ms; a plain ``W.sum()``: 8-12 ms), 8.5 for 4 rows, 10 for 8 and 23 for
    32 (against 12, 21 and 33), and in bf16 3.5 ms for one row (against 9.3 for bf16
    ``F.linear``); the decoder's small weights matched the split product at one row and took
    half its time at 8 (2-core AMD EPYC, 2 threads). The layout is chosen for
    ``PACK_FOR_ROWS`` rows per call (hints of 2 to 64 measured alike; 1, oneDNN's plain layout,
    was up to 2x slower). Without oneDNN the layer keeps a plain weight and calls ``F.linear``.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        if linear.weight.device.type != "cpu":
            raise InputError(f"packed weights run on the CPU; this layer is on {linear.weight.device}")
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        weight = linear.weight.detach().to(dtype).contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.blocked = can_pack()
        # An attribute, not a buffer: a packed tensor is no checkpoint entry and stays on the CPU.
        self.weight = packed_weight(weight) if self.blocked else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.dtype)
        if self.blocked:
            out = gemv.onednn_linear(rows, self.weight, self.bias)
        else:
            out = F.linear(rows, self.weight, self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def __getstate__(self) -> dict:
        """Copied or pickled, the weight travels plain (an opaque packed tensor has no storage to
        copy) and is packed again on arrival."""
        state = super().__getstate__()
        if self.blocked:
            state["weight"] = self.weight.to_dense()
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.blocked:
            self.weight = packed_weight(self.weight)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight one call reads (an attribute: whoever walks the buffers misses it)."""
        return self.in_features * self.out_features * self.dtype.itemsize

    def extra_repr(self) -> str:
        layout = "packed for oneDNN" if self.blocked else "plain"
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.dtype}, {layout}"


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in oneDNN's blocked layout, on 2 MB pages where the OS allows (``collapse``:
    each call streams the whole weight; the output layer took 1.15x less time)."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_FOR_ROWS)
    collapse(packed)
    return packed


def can_pack() -> bool:
    """Whether this torch reorders weights into oneDNN's blocked layout and multiplies them there."""
    return gemv.has_onednn() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


_CONVERTERS = {
    "int8": Int8Linear,
    "bf16": functools.partial(PackedLinear, dtype=torch.bfloat16),
    "fp32": functools.partial(PackedLinear, dtype=torch.float32),
}


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
