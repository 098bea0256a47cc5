"""One registry per kind of component: how names in the API and descriptions in files find classes.

Kinds: ``"layer"``, ``"activation"``, ``"loss"``, ``"optimizer"``, ``"schedule"``, ``"metric"``,
``"callback"``.
Each :class:`Registry` holds two tables:

* **classes**, by class name. Every subclass of :class:`~bpgpu.layers.Layer`,
  :class:`~bpgpu.losses.Loss`, :class:`~bpgpu.optimizers.Optimizer`,
  :class:`~bpgpu.schedules.Schedule`, :class:`~bpgpu.metrics.Metric` and
  :class:`~bpgpu.callbacks.Callback` enters its kind's table
  when its ``class`` statement runs (the base class's ``__init_subclass__``), so a custom one needs
  no extra step. A saved network describes each object as ``{"class": name, "config": {...}}``
  (:meth:`Registry.serialize`); loading looks the name up here and calls
  ``cls.from_config(config)`` (:meth:`Registry.deserialize`). Nothing else from the file is ever
  called, so a file cannot run code.
* **names**, the short names the API accepts (``loss="mse"``, ``optimizer="adam"``,
  ``activation="relu"``, ``metrics=["r2"]``), each bound to a factory that makes a fresh object.
  Add your own with :meth:`Registry.add_name`. Activations are layers: their classes live in the
  ``"layer"`` table and the ``"activation"`` registry holds only names.

Names are unique per kind. Defining a second class with the name of a registered one, from
another module, raises ``ValueError`` (files refer to classes by name, so two would be ambiguous);
running the same class statement again (a reloaded module, a re-run notebook cell) replaces the
earlier class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Registry", "get_registry", "KINDS"]

KINDS = ("layer", "activation", "loss", "optimizer", "schedule", "metric", "callback")


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry:
    """Names and classes of one kind of component (see the module docstring)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.classes: dict[str, type] = {}
        self.names: dict[str, Any] = {}  # name -> factory: a class or a function of no arguments

    @property
    def article(self) -> str:
        return "an" if self.kind[0] in "aeiou" else "a"

    @property
    def plural(self) -> str:
        return f"{self.kind}es" if self.kind.endswith("s") else f"{self.kind}s"

    # -- registering ---------------------------------------------------------------------------
    def register(self, cls: type) -> type:
        """Enter ``cls`` under its class name; returns it (usable as a decorator)."""
        name = cls.__name__
        known = self.classes.get(name)
        if known is not None and known is not cls and _origin(known) != _origin(cls):
            raise ValueError(
                f"a {self.kind} class named {name!r} is already registered ({_origin(known)}); "
                f"{_origin(cls)} needs another name, because saved files refer to {self.kind} "
                "classes by name")
        self.classes[name] = cls
        return cls

    def use_names(self, table: dict[str, Any]) -> None:
        """Make ``table`` (lower-case name -> factory) this registry's name table, the same dict
        object, so entries a module adds to it later count too."""
        for name, factory in table.items():
            if not isinstance(name, str) or name != name.lower() or not callable(factory):
                raise ValueError(f"a {self.kind} name table maps lower-case names to factories; "
                                 f"got {name!r}: {factory!r}")
        self.names = table

    def add_name(self, name: str, factory: Callable[[], Any]) -> None:
        """Let the API accept ``name`` (case-insensitive) for ``factory()``, a fresh object.

        ``factory`` is a class or any function of no arguments. Raises ValueError when ``name`` is
        already taken by another factory."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise TypeError(f"the factory for {self.kind} name {name!r} must be callable (a "
                            f"class or a function of no arguments), got {factory!r}")
        key = name.lower()
        known = self.names.get(key)
        redefined = isinstance(known, type) and isinstance(factory, type) \
            and _origin(known) == _origin(factory)  # the same class statement run again
        if known is not None and known is not factory and not redefined:
            raise ValueError(f"the {self.kind} name {name!r} is already taken by {known!r}")
        self.names[key] = factory

    # -- looking up ----------------------------------------------------------------------------
    def class_named(self, name: str) -> type:
        """The registered class called ``name``; ValueError naming the known ones otherwise."""
        cls = self.classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(f"unknown {self.kind} class {name!r}; known {self.plural}: "
                             f"{', '.join(self.public_classes())}. A custom "
                             f"{self.kind} must be imported before a model using it is loaded")
        return cls

    def create(self, name: str) -> Any:
        """A fresh object from a short name (case-insensitive) or, failing that, a class name
        (a class that can be built without arguments)."""
        if isinstance(name, str):
            factory = self.names.get(name.lower()) or self.classes.get(name)
            if factory is not None and not name.startswith("_"):
                return factory()
        choices = ", ".join(self.names) or ", ".join(self.public_classes())
        raise ValueError(f"unknown {self.kind} {name!r}; expected {self.article} {self.kind} object or "
                         f"one of {choices}")

    def public_classes(self) -> list[str]:
        """Registered class names without a leading underscore, sorted."""
        return sorted(k for k in self.classes if not k.startswith("_"))

    # -- files -----------------------------------------------------------------------------------
    def serialize(self, obj: Any) -> dict[str, Any]:
        """``{"class": name, "config": obj.get_config()}``, JSON-serialisable.

        Raises ValueError for an object whose class is not registered (not a subclass of the
        kind's base class)."""
        cls = type(obj)
        known = self.classes.get(cls.__name__)
        if known is None or _origin(known) != _origin(cls):
            raise ValueError(f"{_origin(cls)} is not a registered {self.kind} class, so a file "
                             f"could not rebuild it; subclass the {self.kind} base class")
        return {"class": cls.__name__, "config": obj.get_config()}

    def deserialize(self, spec: Any) -> Any:
        """Rebuild an object from :meth:`serialize`'s output, by ``cls.from_config(config)`` (or
        ``cls(**config)`` for a class without ``from_config``). Runs no code from ``spec``."""
        if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) \
                or not isinstance(spec.get("config", {}), dict):
            raise ValueError(f"{self.article} {self.kind} description must be "
                             f"{{'class': str, 'config': dict}}, got {spec!r}")
        cls = self.class_named(spec["class"])
        config = dict(spec.get("config", {}))
        build = getattr(cls, "from_config", None)
        try:
            return build(config) if build is not None else cls(**config)
        except TypeError as exc:
            raise ValueError(f"the stored configuration of {self.kind} {spec['class']!r} does "
                             f"not fit its constructor: {exc}") from None


_REGISTRIES = {kind: Registry(kind) for kind in KINDS}


def get_registry(kind: str) -> Registry:
    """The :class:`Registry` of ``kind`` (one of :data:`KINDS`)."""
    try:
        return _REGISTRIES[kind]
    except KeyError:
        raise ValueError(f"unknown kind of component {kind!r}; expected one of "
                         f"{', '.join(KINDS)}") from None
