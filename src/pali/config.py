"""Architecture configs: one dataclass per tower, composed by [`PaliConfig`][pali.PaliConfig].

A tower config names its ``kind``, the registry key of the module that builds it, so a saved
``config.json`` says which encoder and text stack to construct and a new backbone needs no edit
here. Configs hold architecture only; where weights come from is the Hub/conversion layer's
business.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError, RegistryError

C = TypeVar("C", bound="Config")

# Caps on size fields, by field name (first match wins), checked by ``require_positive``: every
# config is validated on construction, so an untrusted config.json claiming 10**6 layers or a
# 10**12-element embedding fails before anything is built (building even on the meta device costs
# time per layer). Each is over 10x what any PaLI tower uses (56 layers, 250112 tokens, 15360 wide).
SIZE_LIMITS: tuple[tuple[str, int], ...] = (
    ("layers", 512), ("depth", 512), ("heads", 1024), ("vocab", 1 << 22), ("image_size", 16384), ("", 1 << 16),
)
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "str | None": (str, type(None))}


def size_limit(name: str) -> int:
    """The largest value size field ``name`` may take (see ``SIZE_LIMITS``)."""
    return next(limit for part, limit in SIZE_LIMITS if part in name)


@dataclass
class Config:
    """Base: dict/JSON round trip with unknown-field detection."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Config) else value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"kind"})
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {unknown}")
        try:
            config = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None
        config.validate()
        return config

    def validate(self) -> None:
        """Check what construction does not: each field's type (JSON may say ``"depth": "12"``).

        Called by ``from_dict``, i.e. on every config read from a file.
        """
        hints = {f.name: f.type for f in dataclasses.fields(self)}
        for name, hint in hints.items():
            hint = hint if isinstance(hint, str) else getattr(hint, "__name__", "")
            value, allowed = getattr(self, name), _TYPES.get(hint)
            if allowed is None:
                continue
            wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
            if wrong or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"{type(self).__name__}.{name} must be a finite {hint}, got {value!r}")

    def require_positive(self, *names: str) -> None:
        """Reject non-integer, non-positive or absurdly large sizes before they become tensors."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be a positive integer, got {value!r}")
            if value > size_limit(name):
                raise ConfigError(
                    f"{type(self).__name__}.{name} = {value} exceeds the limit {size_limit(name)} "
                    "(pali.config.SIZE_LIMITS); a corrupt or hostile config?"
                )

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Parameters of the module this config builds, counted from the config alone (no torch).

        Towers count arithmetically; a config that does not (a plugin's) is built once on the
        meta device and counted.
        """
        from .meta import meta_device
        from .registry import TEXT_STACKS, VISION_ENCODERS

        registry = VISION_ENCODERS if isinstance(self, VisionConfig) else TEXT_STACKS
        with meta_device():
            module = registry.get(self.kind)(self)
        return sum(t.numel() for t in module.state_dict().values())


@dataclass
class VisionConfig(Config):
    """What every vision encoder config offers to [`pali.PaliModel`][]."""

    kind: ClassVar[str] = ""
    image_size: int = 224

    @property
    def width(self) -> int:
        """Feature size of each output token (the projection's input)."""
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        """Number of visual tokens produced for one image at ``image_size``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_dict()}


@dataclass
class TextConfig(Config):
    """What every text stack config offers: an encoder-decoder over a token vocabulary."""

    kind: ClassVar[str] = ""
    vocab_size: int = 250112
    d_model: int = 512
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_dict()}

    def validate(self) -> None:
        """Types, and special token ids that index the vocabulary."""
        super().validate()
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(f"{type(self).__name__}.{name} = {value} is outside the vocabulary [0, {self.vocab_size})")


@dataclass
class ConnectorConfig(Config):
    """What every connector config offers: how many visual tokens reach the text encoder.

    A connector sits between the vision tower and the text stack; its module is built from the
    whole [`PaliConfig`][pali.PaliConfig] (it needs both towers' widths).
    """

    kind: ClassVar[str] = ""

    def num_tokens(self, vision_tokens: int) -> int:
        """Tokens handed to the text encoder when the vision tower gives ``vision_tokens``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_dict()}


def _tower_from_dict(data: Any, registry_getter, what: str) -> Config:
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"PaliConfig.{what} must be an object with a 'kind' field")
    if not isinstance(data["kind"], str):
        raise ConfigError(f"PaliConfig.{what}.kind must be a string, got {data['kind']!r}")
    try:
        module_cls = registry_getter(data["kind"])
    except RegistryError as e:
        raise ConfigError(f"PaliConfig.{what}: {e}") from None
    return module_cls.config_class.from_dict(data)


def _default_connector() -> ConnectorConfig:
    from .connectors.linear import LinearConfig

    return LinearConfig()


@dataclass
class PaliConfig(Config):
    """A PaLI model: vision encoder -> connector -> text encoder-decoder.

    ``connector`` defaults to PaLI's linear projection (whose bias switch stays
    ``projection_bias``, as in every config saved before connectors existed); a config.json
    without a ``connector`` entry loads as linear.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_bias: bool = True
    preset: str | None = None
    connector: ConnectorConfig = field(default_factory=_default_connector)

    def __post_init__(self) -> None:
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, TextConfig):
            raise ConfigError("PaliConfig needs a VisionConfig and a TextConfig")
        if not isinstance(self.connector, ConnectorConfig):
            raise ConfigError("PaliConfig.connector must be a ConnectorConfig")

    @property
    def num_visual_tokens(self) -> int:
        """Tokens one image puts in front of the prompt (after the connector)."""
        return self.connector.num_tokens(self.vision.num_tokens)

    def num_parameters(self) -> int:
        """Vision tower + projection + text stack, as ``PaliModel.num_parameters`` counts them."""
        if self.connector.kind == "linear":
            connector = self.vision.width * self.text.d_model + (self.text.d_model if self.projection_bias else 0)
        else:  # a Q-Former and the like: built once on the meta device and counted
            from .meta import meta_device
            from .registry import CONNECTORS

            with meta_device():
                module = CONNECTORS.get(self.connector.kind)(self)
            connector = sum(t.numel() for t in module.state_dict().values())
        return self.vision.num_parameters() + connector + self.text.num_parameters()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PaliConfig":
        from .registry import CONNECTORS, TEXT_STACKS, VISION_ENCODERS

        if not isinstance(data, dict):
            raise ConfigError(f"PaliConfig expects a JSON object, got {type(data).__name__}")
        data = dict(data)
        data["vision"] = _tower_from_dict(data.get("vision"), VISION_ENCODERS.get, "vision")
        data["text"] = _tower_from_dict(data.get("text"), TEXT_STACKS.get, "text")
        if "connector" in data:
            data["connector"] = _tower_from_dict(data["connector"], CONNECTORS.get, "connector")
        return super().from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "PaliConfig":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, 5000-digit ints, deep nesting
            raise ConfigError(f"config is not valid JSON: {type(e).__name__}: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "PaliConfig":
        return cls.from_json(Path(path).read_text())
