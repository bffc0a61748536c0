"""The ViT's config and its named sizes, apart from the module so a config.json reads without torch.

``pali.models.vision.vit`` builds the module; a saved model's config, the ``pali presets`` listing and
every preset lookup need only this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ...config.base import VisionConfig
from ...config.registry import Preset
from ...errors import ConfigError

#: Activations a ViT (or the Q-Former's MLP) may name; ``pali.nn.mlp.ACTIVATIONS`` implements them.
ACTIVATION_NAMES = ("gelu_tanh", "gelu", "quick_gelu")


@dataclass
class ViTConfig(VisionConfig):
    kind = "vit"
    # A checkpoint's tower may differ from a preset's in layout (OpenCLIP's class token and
    # pre-norm for ViT-G/14) but not in these.
    shape_fields = ("image_size", "patch_size", "hidden_size", "depth", "mlp_dim", "num_heads")
    patch_size: int = 14
    hidden_size: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    act: str = "gelu_tanh"
    norm_eps: float = 1e-6
    patch_bias: bool = True
    qkv_bias: bool = True
    class_token: bool = False
    keep_class_token: bool = False
    key_bias: bool = True
    pre_norm: bool = False
    final_norm: bool = True

    def __post_init__(self) -> None:
        self.require_positive("image_size", "patch_size", "hidden_size", "depth", "mlp_dim", "num_heads")
        if self.act not in ACTIVATION_NAMES:
            raise ConfigError(f"ViTConfig.act {self.act!r} unknown; choose from {sorted(ACTIVATION_NAMES)}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"ViTConfig.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.keep_class_token and not self.class_token:
            raise ConfigError("ViTConfig.keep_class_token needs class_token=True")

    @property
    def width(self) -> int:
        return self.hidden_size

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Output tokens: the patches, plus the class token when it is kept."""
        return self.grid**2 + int(self.keep_class_token)

    def num_parameters(self) -> int:
        d, m = self.hidden_size, self.mlp_dim
        norm = 2 * d  # LayerNorm: scale + bias
        attention = 4 * d * d + ((4 if self.key_bias else 3) * d if self.qkv_bias else 0)
        block = 2 * norm + attention + (d * m + m) + (m * d + d)
        return (
            3 * self.patch_size**2 * d + (d if self.patch_bias else 0)
            + (self.grid**2 + int(self.class_token)) * d + (d if self.class_token else 0)
            + (norm if self.pre_norm else 0) + self.depth * block + (norm if self.final_norm else 0)
        )


def _vit(name: str, description: str, **fields) -> Preset:
    return Preset(name, "vision", partial(ViTConfig, **fields), description)


PRESET_TABLE = (
    _vit("vit-b16", "ViT-B/16 (big_vision)", patch_size=16, hidden_size=768, depth=12, mlp_dim=3072, num_heads=12),
    _vit("vit-g14", "ViT-G/14, PaLI-3B/15B's tower", hidden_size=1664, depth=48, mlp_dim=8192, num_heads=16),
    _vit("vit-e14", "ViT-e/14, PaLI-17B's tower", hidden_size=1792, depth=56, mlp_dim=15360, num_heads=16),
    _vit("siglip-so400m14", "SigLIP So400m/14 tower", hidden_size=1152, depth=27, mlp_dim=4304, num_heads=16),
    _vit("siglip-b16", "SigLIP B/16 tower", patch_size=16, hidden_size=768, depth=12, mlp_dim=3072, num_heads=12),
    _vit(
        "clip-vit-bigg14", "OpenCLIP ViT-bigG/14 tower (ViT-G/14 shape, CLIP layout)",
        hidden_size=1664, depth=48, mlp_dim=8192, num_heads=16, act="gelu", norm_eps=1e-5,
        patch_bias=False, class_token=True, pre_norm=True,
    ),
    _vit(
        "eva-vit-g14", "BLIP-2's EVA ViT-g/14 tower (class token kept, no key bias)",
        hidden_size=1408, depth=39, mlp_dim=6144, num_heads=16, act="gelu", class_token=True,
        keep_class_token=True, key_bias=False,
    ),
    _vit("vit-tiny", "tiny ViT for tests", image_size=32, patch_size=8, hidden_size=32, depth=2, mlp_dim=64, num_heads=4),
)
