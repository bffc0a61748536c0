"""Layers shared by the towers: attention with its backends (``attention``), the MLP block
(``mlp``), the fastest CPU products for a row count (``gemv``), layers that read one input
multiplied as one (``joint``), weights on 2 MB pages (``hugepages``), int8/bf16/packed weights
(``quantize``), greedy's first maximum (``argmax``) and its bf16 screen over an fp32 output
layer (``screen``), position-embedding resampling (``pos_embed``), and building on the meta
device (``meta``). Knows no tower, no
model and no file."""

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.nn.<module> after a bare ``import pali``
