"""Connectors: what turns the vision tower's tokens into the text encoder's visual words.

Each module registers itself in ``pali.registry.CONNECTORS`` under its config's ``kind``:
``linear`` (PaLI's projection, the default) and ``qformer`` (BLIP-2 / InstructBLIP). A plugin adds
one through the ``pali.connectors`` entry-point group. A connector is built from the whole
[`pali.PaliConfig`][] (it needs both towers' widths) and lives at ``PaliModel.projection``,
so PaLI checkpoints keep their ``projection.*`` names.
"""

from . import linear, qformer  # noqa: F401
