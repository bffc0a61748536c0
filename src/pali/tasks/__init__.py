"""Tasks on top of a model and its processor: the task heads (``heads``, a registry of plugins)
and the pipeline that runs them (``pipeline``)."""

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.tasks.<module> after a bare ``import pali``
