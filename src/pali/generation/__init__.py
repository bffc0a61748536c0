"""Decoding: one KV cache (``kv_cache``), one decode loop with greedy, sampling and beam search on
top (``search``). Knows no model: ``PaliModel.generate`` hands it a step function."""

from .search import GenerationConfig, beam_search, decoding, greedy_or_sample

__all__ = ["GenerationConfig", "beam_search", "decoding", "greedy_or_sample"]

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.generation.<module> after a bare ``import pali``
