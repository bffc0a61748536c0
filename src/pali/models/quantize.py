"""``pali.quantize(model, "int8")``: a model whose decoding reads int8, bf16 or fp32 weights in
the form its kernels read fastest.

The layers one decoding step reads (the text decoder's linear layers and the output layer) are
swapped for ``pali.nn.quantize``'s int8 or bf16 forms; with fp32, the output layer is screened
(``pali.nn.screen``: a bf16 copy greedy steps read first, the tokens of the fp32 logits) where
the CPU has bf16 instructions, packed elsewhere, and the decoder's layers keep their plain
weights. Packing those small weights paid at 4 and 8
rows per step (eager, 2-core AMD EPYC, paired: 9% and 7% faster steps) but cost at one row (7%
slower eager, 23% compiled: inductor fuses a plain weight's one-row product into its own
kernels, where a packed weight stays an opaque call), and the output layer, half a gigabyte,
is most of what packing gains at any row count. The text encoder runs once
per generation over every prompt row (196 visual tokens and the prompt, times the batch):
compute-bound, where bf16's doubled matmul throughput pays and int8 weights save little, so with
int8 or bf16 its linear layers go bf16 where the CPU has bf16 instructions; with fp32 they are
packed in fp32. The vision tower and the connector keep their weights: in
bf16 the bundled demo lost a point of German captions and of detection hits. Measured quality
and speed are in ``docs/benchmarks.md`` (decoding against CTranslate2).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..nn.quantize import FORMATS, Int8Linear, PackedLinear, convert_linear, has_bf16_instructions, quantize_linears
from ..nn.screen import ScreenedLinear, can_screen


def quantize(model: nn.Module, fmt: str = "int8", *, encoder: bool | None = None,
             screen: bool | None = None) -> nn.Module:
    """Convert ``model``'s decoding weights to ``fmt`` in place and return it, in eval mode: for
    generation only (it cannot be trained or saved as a checkpoint).

    ``fmt``, as CTranslate2's compute types: ``"int8"`` (int8 weights), ``"bf16"`` (bf16 weights)
    or ``"fp32"`` (the same weights and tokens; the output layer screened or packed, see
    ``screen``; the decoder's small layers stay plain, see the module docstring).

    ``encoder``: also convert the text encoder's linear layers, to bf16 (``"int8"``, ``"bf16"``)
    or packed fp32 (``"fp32"``); the residual stream, norms and attention stay in the model's
    dtype. ``None`` (default): for ``"bf16"`` and ``"fp32"``, and for ``"int8"`` where the CPU has
    bf16 instructions (``avx512_bf16``, AMX), where bf16 halves the encoder's time; elsewhere
    bf16 matmuls are slower than fp32, and the encoder keeps its weights.

    ``screen`` (``"fp32"`` only): the output layer keeps its fp32 weight as it is and gains a
    bf16 copy (``pali.nn.screen.ScreenedLinear``: 1.5x the layer's memory) that greedy decoding
    reads first, computing the fp32 logits of the few rows that can hold the maximum: the
    tokens of the fp32 logits, at about bf16's cost per step. Beam search and sampling need
    every logit and read the fp32 weight unpacked. ``None`` (default): where the CPU has bf16
    instructions (elsewhere the screen is the slower pass); ``False``: the fp32 weight packed
    instead (no extra memory; beam search and sampling run faster: beam x4 1.18x in
    ``docs/benchmarks.md``).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown weight format {fmt!r}; choose from {', '.join(FORMATS)}")
    text = getattr(model, "text", None)
    if text is None or not hasattr(text, "decoder") or not isinstance(getattr(text, "lm_head", None), nn.Linear):
        raise InputError(
            f"quantize needs a model with a text decoder and an fp output layer (a PaliModel not "
            f"quantized yet), got {type(model).__name__}"
        )
    # int8: the decoder's small layers weight-only (bf16 activations), the large output layer
    # with dynamic int8 activations (pali.nn.quantize has the measurements).
    if fmt != "fp32":  # fp32: the decoder's small weights stay plain (the module docstring says why)
        quantize_linears(text.decoder, fmt, **({"activations": "bf16"} if fmt == "int8" else {}))
    if screen and fmt != "fp32":
        raise InputError(f"screen=True is for the 'fp32' format (its greedy steps); {fmt!r} has no fp32 weight to screen")
    if screen is None:
        screen = fmt == "fp32" and can_screen() and text.lm_head.bias is None
    text.lm_head = ScreenedLinear(text.lm_head) if screen else convert_linear(text.lm_head, fmt)
    if encoder and not hasattr(text, "encoder"):
        raise InputError(f"encoder=True, but {type(text).__name__} has no text encoder to convert")
    if encoder is None:
        encoder = hasattr(text, "encoder") and (fmt != "int8" or has_bf16_instructions())
    if encoder:
        quantize_linears(text.encoder, "fp32" if fmt == "fp32" else "bf16")
    return model.eval()


def weight_format(model: nn.Module) -> str | None:
    """The format ``quantize`` converted ``model``'s decoding weights to (``"int8"``, ``"bf16"``,
    ``"fp32"``), or ``None`` for a model it has not converted (what a results file records)."""
    head = getattr(getattr(model, "text", None), "lm_head", None)
    if isinstance(head, Int8Linear):
        return "int8"
    if isinstance(head, ScreenedLinear):
        return "fp32"
    if isinstance(head, PackedLinear):
        return {torch.bfloat16: "bf16", torch.float32: "fp32"}[head.dtype]
    return None
