"""Name -> entry registries, filled by built-ins and by installed plugins.

A vision encoder, a text stack, a connector or a task head is one module that calls ``register``
on the registry it belongs to. Third-party packages add their own through Python entry points
(groups ``pali.vision_encoders``, ``pali.text_stacks``, ``pali.connectors``, ``pali.heads``): each
entry point names a module (or object) whose import performs the registration. Entry points are
loaded lazily, the first time a registry is read, so ``import pali`` stays cheap and a broken
plugin only fails when used. Each registry names its built-in modules too, imported on that same
first read just before the plugins: a plugin can never take a built-in's name, however pali was
imported (``import pali`` itself imports no torch, so the ``pali`` command can print its help at
once).

Two things are read without importing any module that builds something. A tower's config class,
by kind: a built-in's is named by module path (``configs``), so ``PaliConfig.from_json`` reads a
config.json without torch; a plugin's is its module's ``config_class``. And the presets: each
built-in config module holds an explicit ``PRESET_TABLE`` (a tuple of `Preset`),
read on the preset registry's first read; nothing registers a preset as a side effect of an import.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, TypeVar

from ..errors import RegistryError

if TYPE_CHECKING:
    from .base import Config

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to entries with lazy entry-point discovery."""

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        builtins: tuple[str, ...] = (),
        *,
        tables: tuple[str, ...] = (),
        configs: dict[str, str] | None = None,
    ) -> None:
        """``builtins``: modules whose import registers their entries. ``tables``: ``"module:NAME"``
        of tuples of entries, each registered under its ``name``. ``configs``: for built-in towers,
        kind -> ``"module:Class"`` of the config class, importable without the tower's module."""
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtins = builtins
        self.tables = tables
        self.configs = dict(configs or {})
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None and not builtins and not tables

    def register(self, name: str, entry: T, *, origin: str = "pali") -> T:
        """Add ``entry`` under ``name``; a second registration of the same name raises."""
        if name in self._entries:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by {self._origins[name]} and by {origin}"
            )
        self._entries[name] = entry
        self._origins[name] = origin
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` form of [`register`][pali.config.registry.Registry.register]."""
        return lambda entry: self.register(name, entry, origin=_origin_of(entry))

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for module in self.builtins:  # their import registers them; a re-import is a no-op
            importlib.import_module(module)
        for table in self.tables:
            for entry in _import_object(table):
                self.register(entry.name, entry, origin=table.partition(":")[0])
        for ep in (entry_points(group=self.entry_point_group) if self.entry_point_group else ()):
            try:
                loaded = ep.load()
            except RegistryError:
                raise  # a clash detected while the plugin module registered itself
            except Exception as e:
                raise RegistryError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to load: {e!r}") from e
            # An entry point may name a module whose import registered its entries, or the object
            # itself, registered here under the entry point's name unless its import already did
            # so. Any other entry under that name is a clash and raises.
            if not _is_module(loaded) and self._entries.get(ep.name) is not loaded:
                self.register(ep.name, loaded, origin=f"plugin {ep.value}")

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def config_class(self, name: str) -> type["Config"]:
        """The config class of the tower registered as ``name``.

        A built-in's comes from its config module alone (``configs``), so reading a config
        imports no torch and builds nothing; a plugin's is the ``config_class`` of its module.
        """
        if name in self.configs:
            return _import_object(self.configs[name])
        return self.get(name).config_class

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _import_object(path: str) -> Any:
    """``"package.module:attribute"`` -> the attribute."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _is_module(obj: object) -> bool:
    return type(obj).__name__ == "module"


def _origin_of(entry: object) -> str:
    return getattr(entry, "__module__", None) or "pali"


@dataclass(frozen=True)
class Preset:
    """A named config: ``family`` is "pali", "vision" or "text"; ``build()`` returns a fresh one."""

    name: str
    family: str
    build: Callable[[], "Config"]
    description: str = ""


VISION_ENCODERS: Registry[Any] = Registry(
    "vision encoder", "pali.vision_encoders", ("pali.models.vision.vit",),
    configs={"vit": "pali.models.vision.vit_config:ViTConfig"},
)
TEXT_STACKS: Registry[Any] = Registry(
    "text stack", "pali.text_stacks", ("pali.models.text.mt5",),
    configs={"mt5": "pali.models.text.mt5_config:MT5Config"},
)
CONNECTORS: Registry[Any] = Registry(
    "connector", "pali.connectors", ("pali.models.connectors.linear", "pali.models.connectors.qformer"),
    configs={
        "linear": "pali.models.connectors.linear_config:LinearConfig",
        "qformer": "pali.models.connectors.qformer_config:QFormerConfig",
    },
)
# No entry-point group: presets come from the built-in tables, and from ``register_preset`` calls
# of code that wants its own (no plugin package has needed one).
PRESETS: Registry[Preset] = Registry(
    "preset", tables=("pali.models.vision.vit_config:PRESET_TABLE", "pali.models.text.mt5_config:PRESET_TABLE",
                      "pali.config.presets:PRESET_TABLE"),
)
HEADS: Registry[Any] = Registry("head", "pali.heads", ("pali.tasks.heads",))


def register_preset(name: str, family: str, description: str = ""):
    """Decorator: register a zero-argument function returning a fresh config as a preset.

    For presets of your own, at run time; pali's are tables (``PRESET_TABLE``), not registrations.
    """

    def wrap(build: Callable[[], "Config"]) -> Callable[[], "Config"]:
        PRESETS.register(name, Preset(name, family, build, description), origin=build.__module__)
        return build

    return wrap


def list_vision_encoders() -> list[str]:
    """Names of the vision encoders: built-in and from installed plugins."""
    return VISION_ENCODERS.names()


def list_text_stacks() -> list[str]:
    """Names of the text stacks: built-in and from installed plugins."""
    return TEXT_STACKS.names()


def list_connectors() -> list[str]:
    """Names of the vision-to-text connectors: built-in (``linear``, ``qformer``) and from plugins."""
    return CONNECTORS.names()


def list_heads() -> list[str]:
    """Names of the task heads: built-in and from plugins."""
    return HEADS.names()
