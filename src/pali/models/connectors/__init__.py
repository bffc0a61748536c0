"""Connectors: what turns the vision tower's tokens into the text encoder's visual words.

One module per connector, registered in ``pali.config.registry.CONNECTORS`` under its config's ``kind``:
``linear`` (PaLI's projection, the default) and ``qformer`` (BLIP-2 / InstructBLIP); each config
lives in a torch-free ``*_config`` module beside it. A plugin adds one through the
``pali.connectors`` entry-point group. A connector is built from the whole
[`pali.PaliConfig`][] (it needs both towers' widths) and lives at ``PaliModel.projection``,
so PaLI checkpoints keep their ``projection.*`` names. Nothing is imported here: the registry
imports the modules on its first read, and a config loads without them.
"""

from ...lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.models.connectors.<module> after a bare ``import pali``
