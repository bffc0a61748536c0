"""Attention kernels for PaLI's hot path, knowing nothing about models.

Import needs only PyTorch: Triton is imported when a fused kernel is first used.
"""

from .api import attention
from .reference import attention_reference, relative_position_bucket, t5_relative_bias

__all__ = ["attention", "attention_reference", "relative_position_bucket", "t5_relative_bias"]
