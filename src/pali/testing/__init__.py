"""Fixtures shared by the tests and the benchmarks: checkpoints written in the real foreign formats
(``t5x``, ``big_vision``), transformers reference models loaded with our weights
(``hf_reference``), tiny random transformers BLIP-2s (``blip2``), and state-dict helpers
(``checkpoints``). Needs the ``test`` extra (transformers, msgpack); nothing else in pali imports it."""

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.testing.<module> after a bare ``import pali``
