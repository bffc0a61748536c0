"""Text stacks: each module registers itself in ``pali.config.registry.TEXT_STACKS``; its config and
presets live in a torch-free ``*_config`` module beside it. Nothing is imported here: the
registry imports the modules on its first read, and a config loads without them."""

from ...lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.models.text.<module> after a bare ``import pali``
