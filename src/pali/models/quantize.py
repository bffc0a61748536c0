"""``pali.quantize(model, "int8")``: a model whose decoding reads int8 (or bf16) weights.

The layers one decoding step reads (the text decoder's linear layers and the output layer) are
swapped for ``pali.nn.quantize``'s int8 or bf16 forms; the vision tower, the connector and the
text encoder, which run once per generation over many rows, keep their weights. Measured quality
and speed are in ``docs/benchmarks.md`` (decoding against CTranslate2).
"""

from __future__ import annotations

from torch import nn

from ..errors import InputError
from ..nn.quantize import FORMATS, convert_linear, quantize_linears


def quantize(model: nn.Module, fmt: str = "int8") -> nn.Module:
    """Convert ``model``'s decoding weights to ``fmt`` (``"int8"`` or ``"bf16"``) in place and return
    it, in eval mode: for generation only (it cannot be trained or saved as a checkpoint)."""
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
    quantize_linears(text.decoder, fmt, **({"activations": "bf16"} if fmt == "int8" else {}))
    text.lm_head = convert_linear(text.lm_head, fmt)
    return model.eval()
