"""Layer types come from the entry-point group `cnntool.layers`, built-ins included.

Discovery reads installed distributions' metadata only; a layer class is imported the first
time it is needed. A plugin that fails to import or declares a broken layer is reported once
as "failed to load layer type X from distribution Y: <cause>" and everything else keeps
working; a spec that uses the type gets that message as its validation error. Two
distributions claiming one type name is an error naming both; a plugin can never replace a
built-in. Set CNNTOOL_DISABLE_PLUGINS=1 to load only cnntool's own layers.
"""

from __future__ import annotations

import os
import typing
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from cnntool.errors import PluginError, exception_text
from cnntool.layers.base import Layer, LayerConfig
from cnntool.model.spec_fields import SpecBase

__all__ = [
    "DISABLE_PLUGINS_ENV",
    "GROUP",
    "LayerType",
    "PluginWarning",
    "Registry",
    "get_registry",
    "reset_registry",
]

GROUP = "cnntool.layers"
BUILTIN_DISTRIBUTION = "cnntool"
DISABLE_PLUGINS_ENV = "CNNTOOL_DISABLE_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin could not be used; the rest of cnntool works without it."""


@dataclass
class LayerType:
    """One entry point of the group: a type name and the distribution that provides it."""

    name: str
    value: str
    distribution: str
    version: str
    entry_point: EntryPoint | None = None
    layer_class: type[Layer] | None = None
    error: str | None = None

    @property
    def provider(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


@dataclass
class Registry:
    """The known layer types. `cnntool.model.registry.get_registry()` gives the shared one."""

    load_plugins: bool = True
    types: dict[str, LayerType] = field(default_factory=dict)
    conflicts: dict[str, list[LayerType]] = field(default_factory=dict)
    # Plugin entries refused because a built-in has their name; `error` says so.
    rejected: list[LayerType] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _spec_model: Any = None

    @classmethod
    def discover(cls, load_plugins: bool | None = None) -> Registry:
        """Read the entry points of every installed distribution (no imports yet)."""
        if load_plugins is None:
            load_plugins = os.environ.get(DISABLE_PLUGINS_ENV, "").strip().lower() in ("", "0", "false", "no")
        registry = cls(load_plugins=load_plugins)
        found = []
        providers: dict[int, tuple[str, str]] = {}  # id(dist) -> (name, version)
        for ep in entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            if dist is None:
                distribution, version = "<unknown>", "?"
            else:
                if id(dist) not in providers:  # each .name, .version parses METADATA again
                    metadata = dist.metadata
                    providers[id(dist)] = (metadata["Name"], metadata["Version"])
                distribution, version = providers[id(dist)]
            found.append(LayerType(ep.name, ep.value, canonical(distribution), version, ep))
        # Built-ins first, so a plugin claiming a built-in name is refused whatever the order
        # of sys.path.
        for entry in sorted(found, key=lambda e: not e.builtin):
            registry.add(entry)
        return registry

    def add(self, entry: LayerType) -> None:
        """Record one entry point, resolving a clash over its type name (built-ins are
        added first and always kept)."""
        if not entry.builtin and not self.load_plugins:
            return
        name = entry.name
        if name in self.conflicts:
            if all(e.distribution != entry.distribution for e in self.conflicts[name]):
                self.conflicts[name].append(entry)
            return
        current = self.types.get(name)
        if current is None:
            self.types[name] = entry
            return
        if current.distribution == entry.distribution:
            return  # the same distribution seen twice on sys.path
        if current.builtin:
            entry.error = (
                f"layer type {name!r} is claimed by {entry.provider} ({entry.value}) and by "
                f"cnntool's built-in {current.value}; the built-in is kept. Rename the plugin's type."
            )
            self.rejected.append(entry)
            self.report(entry.error)
            return
        del self.types[name]
        self.conflicts[name] = [current, entry]
        self.report(conflict_message(name, self.conflicts[name]))

    def report(self, message: str) -> None:
        """Warn about a plugin problem, once per registry."""
        if message in self.problems:
            return
        self.problems.append(message)
        warnings.warn(message, PluginWarning, stacklevel=3)

    def distribution_entries(self, distribution: str) -> list[LayerType]:
        """Every entry point a distribution declared: usable, failed, in conflict or rejected."""
        wanted = canonical(distribution)
        claims = [*self.types.values(), *self.rejected, *(e for es in self.conflicts.values() for e in es)]
        return sorted((e for e in claims if e.distribution == wanted), key=lambda e: e.name)

    # --- lookup ----------------------------------------------------------------------------

    def get(self, name: str) -> type[Layer]:
        """The layer class for a type name, imported on first use."""
        if name in self.conflicts:
            raise PluginError(conflict_message(name, self.conflicts[name]))
        entry = self.types.get(name)
        if entry is None:
            known = ", ".join(sorted(self.types)) or "none"
            raise PluginError(f"unknown layer type {name!r}; installed types: {known}")
        if entry.layer_class is None and entry.error is None:
            self._load(entry)
        if entry.error is not None:
            raise PluginError(entry.error)
        assert entry.layer_class is not None  # _load sets either the class or the error
        return entry.layer_class

    def provider(self, name: str) -> str:
        """'distribution==version' of the distribution providing a type."""
        entry = self.types.get(name)
        if entry is None:
            raise PluginError(f"unknown layer type {name!r}")
        return entry.provider

    def load_all(self) -> dict[str, type[Layer]]:
        """Import every layer type that loads; report the ones that do not."""
        loaded: dict[str, type[Layer]] = {}
        for name, entry in sorted(self.types.items()):
            if entry.layer_class is None and entry.error is None:
                self._load(entry)
            if entry.layer_class is not None:
                loaded[name] = entry.layer_class
        return loaded

    def _load(self, entry: LayerType) -> None:
        where = f"layer type {entry.name!r} from distribution {entry.provider}"
        try:
            if entry.entry_point is None:
                raise RuntimeError(f"no entry point for {entry.value}")
            cls = entry.entry_point.load()
        except Exception as exc:  # a broken plugin must never take cnntool down
            entry.error = f"failed to load {where}: {exception_text(exc, None, with_type=True)}"
            self.report(entry.error)
            return
        problem = None
        config = getattr(cls, "Config", None)
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            problem = f"{entry.value} is not a subclass of cnntool.layers.Layer"
        elif not (isinstance(config, type) and issubclass(config, LayerConfig)):
            problem = f"{entry.value}.Config is not a subclass of cnntool.layers.LayerConfig"
        else:
            field_info = config.model_fields.get("type")
            literal = typing.get_args(field_info.annotation) if field_info is not None else ()
            if literal != (entry.name,):
                found = f"Literal[{', '.join(map(repr, literal))}]" if literal else "no type literal"
                problem = f"{entry.value}.Config must declare type: Literal[{entry.name!r}], found {found}"
            elif not entry.builtin:  # the built-ins' schemas are checked by the tests
                # `cnntool schema` and the spec union need every config to have a JSON Schema.
                try:
                    config.model_json_schema()
                except Exception as exc:
                    cause = exception_text(exc, None, with_type=True)
                    problem = f"{entry.value}.Config has no JSON Schema: {cause}"
        if problem is not None:
            entry.error = f"failed to load {where}: {problem}"
            self.report(entry.error)
            return
        entry.layer_class = cls

    # --- the spec model --------------------------------------------------------------------

    def spec_model(self) -> Any:
        """The pydantic model of a network spec, over the union of every loadable layer
        config. Built once per registry."""
        if self._spec_model is None:
            # Any: pydantic types made at run time, the layers' configs and the refusals.
            configs: tuple[Any, ...] = tuple(cls.Config for cls in self.load_all().values())
            refused = {name: e.error for name, e in self.types.items() if e.error is not None}
            refused.update({name: conflict_message(name, es) for name, es in self.conflicts.items()})
            configs += tuple(
                SkipJsonSchema[refusal(name, error)]  # type: ignore[misc]  # a model made at run time
                for name, error in sorted(refused.items())
            )
            if len(configs) == 1:
                layer_union: Any = configs[0]
            else:
                layer_union = Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007
            self._spec_model = create_model(
                "NetworkSpec",
                __base__=SpecBase,
                layers=(list[layer_union], Field(min_length=1, max_length=10_000)),
            )
        return self._spec_model


def refusal(name: str, error: str) -> type[BaseModel]:
    """A config model for a type that cannot be used: a spec naming it fails validation with
    `error` (why the plugin failed) instead of "unknown type"."""

    def refuse(cls: type, data: Any) -> Any:
        raise PydanticCustomError("layer_type_unusable", error)

    return create_model(
        f"Unusable_{name}",
        __config__=ConfigDict(extra="allow"),
        __validators__={"refuse": model_validator(mode="before")(refuse)},  # type: ignore[dict-item]  # pydantic's stub wants functions; it reads the decorator's descriptor
        type=(Literal[name], ...),  # type: ignore[arg-type]  # a Literal of a name known at run time
    )


def canonical(distribution: str) -> str:
    """Distribution names compare as PEP 503 normalises them ('Cnntool_Extras' == 'cnntool-extras')."""
    return distribution.lower().replace("_", "-").replace(".", "-")


def conflict_message(name: str, claimants: list[LayerType]) -> str:
    who = " and ".join(f"{e.provider} ({e.value})" for e in sorted(claimants, key=lambda e: e.distribution))
    return f"layer type {name!r} is claimed by two distributions: {who}; uninstall one of them"


_registry: Registry | None = None


def get_registry() -> Registry:
    """The registry of this process, discovered on first use."""
    global _registry
    if _registry is None:
        _registry = Registry.discover()
    return _registry


def reset_registry() -> None:
    """Forget the discovered types, e.g. after installing or removing a plugin."""
    global _registry
    _registry = None
