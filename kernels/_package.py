"""Attention kernels for PaLI's hot path, knowing nothing about models: what ``pali.kernels`` exports.

Import needs only PyTorch: Triton is imported when a fused kernel is first used.

This is the package's ``__init__`` under another name. A ``kernels/__init__.py`` would make the
folder a regular package called ``kernels``, and Python run from the repository root (where the
folder is on ``sys.path``) would import it instead of an installed ``kernels`` package, such as
Hugging Face's, which transformers imports. Without one the folder is at most a namespace
portion, which every regular package of the same name outranks (PEP 420). ``pali`` binds this
file as ``pali.kernels`` by path (``pali._kernels_path``), in a checkout and in the wheel alike.
"""

from .api import attention
from .reference import attention_reference, relative_position_bucket, t5_relative_bias

__all__ = ["attention", "attention_reference", "relative_position_bucket", "t5_relative_bias"]
