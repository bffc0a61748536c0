"""From raw inputs to model batches and back: the processor (``processor``), image preprocessing
(``image``), the sentencepiece tokenizer (``tokenizer``, rebuilt from transformers' ``tokenizer.json``
by ``tokenizer_json``), the Q-Former's WordPiece (``wordpiece``), the prompts of each model family
(``prompts``) and transformers' processor files (``hf_processing``)."""

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.processing.<module> after a bare ``import pali``
