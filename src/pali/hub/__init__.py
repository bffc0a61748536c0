"""Hugging Face Hub integration: the Hub side of from_pretrained / push_to_hub / from_unimodal.

The Hub lives here, never in the model code, and no file format does: ``download`` turns a repo id
(or a local folder) into a local folder, ``push`` uploads one, ``card`` writes the model card,
``unimodal`` seeds a PaLI from public tower checkpoints (recipes), ``cache`` opens a foreign
checkpoint: in place through its ``pali.convert`` plan (transformers safetensors), else converted
once into the conversion cache (``pali cache list`` / ``clear``). Reading and writing the files is
``pali.io``; a folder or a plan becomes a model in ``pali.io.loading``. ``PaliModel`` reaches them through [`pali.pretrained.PretrainedMixin`][].
"""

from .errors import HubError


def list_recipes():
    """Presets that ``PaliModel.from_unimodal`` can seed from public checkpoints, and from what."""
    from .unimodal import list_recipes as _list

    return _list()


__all__ = ["HubError", "list_recipes"]

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.hub.<module> after a bare ``import pali``
