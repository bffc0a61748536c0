"""Fine-tuning helpers applied to a model from outside: freezing, LoRA targets and summaries
(``helpers``), FSDP sharding (``parallel``)."""

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.train.<module> after a bare ``import pali``
