"""Hugging Face Hub integration: from_pretrained / save_pretrained / push_to_hub / from_unimodal.

Files and the Hub live here, never in the model code: ``download`` fetches folders, ``load``
fills a meta-built model from safetensors, ``save`` writes and uploads, ``card`` writes the model
card, ``unimodal`` seeds a PaLI from public tower checkpoints. ``PaliModel`` reaches them through
:class:`pali.pretrained.PretrainedMixin`.
"""

from .errors import HubError


def list_recipes():
    """Presets that ``PaliModel.from_unimodal`` can seed from public checkpoints, and from what."""
    from .unimodal import list_recipes as _list

    return _list()


__all__ = ["HubError", "list_recipes"]
