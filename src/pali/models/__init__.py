"""The model: ``PaliModel`` (``pali.py``) assembles a vision encoder
(``vision/``), a connector (``connectors/``) and a text stack (``text/``), each one module
registered under its config's ``kind``, its config in a torch-free ``*_config`` module beside it.

Nothing is imported here, so a tower's config module loads without torch; ``pali.PaliModel`` (in
``pali.pretrained``) is this model with loading and saving added.
"""

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.models.<module> after a bare ``import pali``
