"""Architecture configs: one dataclass per tower, composed by [`PaliConfig`][pali.PaliConfig].

A tower config names its ``kind``, the registry key of the module that builds it, so a saved
``config.json`` says which encoder and text stack to construct and a new backbone needs no edit
here. Configs hold architecture only; where weights come from is the Hub/conversion layer's
business.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import functools
import json
import math
import types
import typing
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError, RegistryError

C = TypeVar("C", bound="Config")

# Caps on size fields, by field name (first match wins), checked by ``require_positive``: every
# config is validated on construction, so an untrusted config.json claiming 10**6 layers or a
# 10**12-element embedding fails before anything is built (building even on the meta device costs
# time per layer). Each is over 10x what any PaLI tower uses (56 layers, 250112 tokens, 15360 wide).
SIZE_LIMITS: tuple[tuple[str, int], ...] = (
    ("layers", 512), ("depth", 512), ("heads", 1024), ("vocab", 1 << 22), ("image_size", 16384), ("", 1 << 16),
)


def size_limit(name: str) -> int:
    """The largest value size field ``name`` may take (see ``SIZE_LIMITS``)."""
    return next(limit for part, limit in SIZE_LIMITS if part in name)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` as JSON can carry it: bool is not an int, an int is a
    float, a float is finite; ``X | None``, ``tuple[X, ...]``, ``list[X]`` and nested configs
    are checked through; ``Any`` takes anything, any other class its instances."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(map(_conforms, value, args)))
    if origin is list:
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    return isinstance(value, origin or hint)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


@dataclass
class Config:
    """Base: dict/JSON round trip with unknown-field detection and type checks from the annotations."""

    #: The fields that fix the parameter shapes of what this config builds. ``from_unimodal``
    #: (``pali.hub.unimodal``) lets a checkpoint's tower differ from a preset's in any other field
    #: (its layout, say) but not in these; ``None``: every field counts.
    shape_fields: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    @functools.cache
    def field_types(cls) -> dict[str, Any]:
        """Each field's type, resolved from its annotation (what ``validate`` checks)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    def shape(self) -> dict[str, Any]:
        """The values of ``shape_fields`` (every field when it is ``None``)."""
        names = self.shape_fields if self.shape_fields is not None else [f.name for f in dataclasses.fields(self)]
        return {name: getattr(self, name) for name in names}

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
        types_ = cls.field_types()
        # JSON has no tuples: a tuple field comes back as a list.
        values = {
            k: tuple(v) if isinstance(v, list) and typing.get_origin(types_[k]) is tuple else v
            for k, v in data.items() if k in names
        }
        try:
            config = cls(**values)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None
        config.validate()
        return config

    def validate(self) -> None:
        """Check what construction does not: each field's type (JSON may say ``"depth": "12"``).

        Called by ``from_dict``, i.e. on every config read from a file. The types come from the
        annotations (``typing.get_type_hints``), so ``int | None`` or ``tuple[int, ...]`` fields
        are checked like plain ones.
        """
        for name, hint in self.field_types().items():
            value = getattr(self, name)
            if not _conforms(value, hint):
                raise ConfigError(f"{type(self).__name__}.{name} must be a finite {_type_name(hint)}, got {value!r}")

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

        The built-in towers count arithmetically; a config that cannot (a plugin's, say) raises
        ``NotImplementedError``, and ``pali.models.count.count_parameters``
        builds it once on the meta device instead.
        """
        raise NotImplementedError(f"{type(self).__name__} does not count its parameters from the config")


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

    def num_parameters(self, model: "PaliConfig") -> int:  # type: ignore[override]
        """Parameters of the connector between ``model``'s towers (it needs both widths)."""
        raise NotImplementedError(f"{type(self).__name__} does not count its parameters from the config")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_dict()}


def _tower_from_dict(data: Any, registry, what: str) -> Config:
    """A tower's config from its dict, by its ``kind`` in ``registry`` (without building, or
    for a built-in even importing, the tower's module)."""
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"PaliConfig.{what} must be an object with a 'kind' field")
    if not isinstance(data["kind"], str):
        raise ConfigError(f"PaliConfig.{what}.kind must be a string, got {data['kind']!r}")
    try:
        config_class = registry.config_class(data["kind"])
    except RegistryError as e:
        raise ConfigError(f"PaliConfig.{what}: {e}") from None
    return config_class.from_dict(data)


def _default_connector() -> ConnectorConfig:
    """PaLI's linear projection, found by its kind like any connector (this module names none)."""
    from .registry import CONNECTORS

    return CONNECTORS.config_class("linear")()


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
        """Vision tower + connector + text stack, as ``PaliModel.num_parameters`` counts them, from
        the configs alone (``NotImplementedError`` where a part cannot count itself)."""
        return self.vision.num_parameters() + self.connector.num_parameters(self) + self.text.num_parameters()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PaliConfig":
        from .registry import CONNECTORS, TEXT_STACKS, VISION_ENCODERS

        if not isinstance(data, dict):
            raise ConfigError(f"PaliConfig expects a JSON object, got {type(data).__name__}")
        data = dict(data)
        data["vision"] = _tower_from_dict(data.get("vision"), VISION_ENCODERS, "vision")
        data["text"] = _tower_from_dict(data.get("text"), TEXT_STACKS, "text")
        if "connector" in data:
            data["connector"] = _tower_from_dict(data["connector"], CONNECTORS, "connector")
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
