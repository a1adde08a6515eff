"""Records: classes of named fields, as ``dataclasses`` makes them, without generating code.

Theory of operation
-------------------
``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``
(and, frozen, ``__hash__``, ``__setattr__``, ``__delattr__``) as source
text and compiles it with ``exec``: about 0.5 ms per class at import, and
the module itself needs ``inspect`` (with ``ast``, ``dis``, ``tokenize``).
The configuration, the host's network and the namespace's set-up are
records built once per run, and their classes were a sixth of our start-up
CPU time (doc/performance.md, "Start-up and memory").

``@record`` gives a class the same behaviour with methods written once,
here, for every record: ``__init__`` takes the fields positionally or by
name, in the order of the class's annotations, with defaults (a value, or
``field(default_factory=...)``), then calls ``__post_init__`` if the class
has one; ``__repr__``, ``__eq__`` and ``__hash__`` use the fields marked
for them.  ``frozen=True`` refuses assignment (``AttributeError``; the
class's own ``__post_init__`` may use ``object.__setattr__``), and with
``eq`` makes the record hashable; ``slots=True`` rebuilds the class with
``__slots__``.  Generic methods are slower per instance than generated ones
(a loop over the fields): records are for objects made a few times per run,
not per frame.

``NamedTuple`` is ``typing.NamedTuple`` for the same reason: ``typing``
checks every field's annotation, which for a string (every module here
has ``from __future__ import annotations``) means compiling it into a
``ForwardRef``: 86 µs for a class of five fields where
``collections.namedtuple``, which ours calls with the annotations' names and
the class's defaults, methods and docstring, takes 31 µs; 26 classes are
made at start-up.  (mypyc builds the named tuples of the modules it
compiles through ``typing`` whatever the name: those are not affected.)

To type checkers ``record``, ``field`` and ``NamedTuple`` *are*
``dataclasses.dataclass``, ``dataclasses.field`` and ``typing.NamedTuple``
(under ``TYPE_CHECKING``), so constructor calls are checked as for those.
``replace(obj, **changes)`` and ``fields(cls)`` stand for
``dataclasses.replace`` and ``dataclasses.fields``.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

__all__ = ["NamedTuple", "field", "fields", "record", "replace"]

_MISSING: Any = object()


class Field:
    """One field: its name, default (or factory) and whether ``__init__``,
    ``__repr__`` and ``__eq__`` see it."""

    __slots__ = ("name", "default", "default_factory", "init", "repr", "compare")

    def __init__(self, default: Any = _MISSING, default_factory: Any = _MISSING,
                 init: bool = True, repr: bool = True, compare: bool = True) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init
        self.repr = repr
        self.compare = compare

    def value(self) -> Any:
        """The default value, or ``_MISSING`` (required)."""
        if self.default_factory is not _MISSING:
            return self.default_factory()
        return self.default


def _field(*, default: Any = _MISSING, default_factory: Any = _MISSING, init: bool = True,
           repr: bool = True, compare: bool = True) -> Any:
    return Field(default, default_factory, init, repr, compare)


def _fields_of(cls: type) -> tuple[Field, ...]:
    return cls.__record_fields__  # type: ignore[attr-defined, no-any-return]


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    init = cls.__record_init__
    if len(args) > len(init):
        raise TypeError(f"{cls.__name__}() takes {len(init)} positional arguments "
                        f"but {len(args)} were given")
    given = dict(zip((f.name for f in init), args, strict=False))  # the first len(args)
    for name, value in kwargs.items():
        if name in given or name not in cls.__record_names__:
            raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {name!r}")
        given[name] = value
    for f in _fields_of(cls):
        value = given.get(f.name, _MISSING) if f.init else _MISSING
        if value is _MISSING:
            value = f.value()
            if value is _MISSING:
                if f.init:
                    raise TypeError(f"{cls.__name__}() missing argument {f.name!r}")
                continue
        object.__setattr__(self, f.name, value)
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in _fields_of(type(self))
                      if f.repr)
    return f"{type(self).__qualname__}({shown})"


def _compared(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in _fields_of(type(self)) if f.compare)


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) == _compared(other)


def _hash(self: Any) -> int:
    return hash(_compared(self))


def _frozen_setattr(self: Any, name: str, _value: Any) -> None:
    raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def _make(cls: type, frozen: bool, eq: bool, slots: bool) -> type:
    own: list[Field] = []
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name = name
        own.append(f)
    inherited = tuple(f for base in reversed(cls.__mro__[1:])
                      for f in base.__dict__.get("__record_fields__", ()))
    all_fields = inherited + tuple(own)
    namespace = dict(cls.__dict__)
    namespace.pop("__dict__", None)  # the old class's descriptors: the new class makes its own
    namespace.pop("__weakref__", None)
    for f in own:
        namespace.pop(f.name, None)  # the defaults live in the fields, not the class
    namespace.update(
        __record_fields__=all_fields,
        __record_init__=tuple(f for f in all_fields if f.init),
        __record_names__=frozenset(f.name for f in all_fields if f.init),
        __init__=_init, __repr__=_repr,
    )
    if eq:
        namespace.update(__eq__=_eq, __hash__=_hash if frozen else None)
    if frozen:
        namespace.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
    if slots:
        namespace["__slots__"] = tuple(f.name for f in own)
    return type(cls)(cls.__name__, cls.__bases__, namespace)


def _record(cls: Any = None, /, *, frozen: bool = False, eq: bool = True,
            slots: bool = False) -> Any:
    def wrap(cls: type) -> type:
        return _make(cls, frozen, eq, slots)

    return wrap if cls is None else wrap(cls)


def replace(obj: Any, /, **changes: Any) -> Any:
    """A copy of record ``obj`` with ``changes``, through its ``__init__``."""
    values = {f.name: getattr(obj, f.name) for f in type(obj).__record_init__}
    values.update(changes)
    return type(obj)(**values)


def fields(cls: type) -> tuple[str, ...]:
    """The names of the fields of record class ``cls``, in order."""
    return tuple(f.name for f in _fields_of(cls))


class _NamedTupleMeta(type):
    """``class X(NamedTuple)``: ``collections.namedtuple`` of the annotated names, with
    the defaults, methods, properties and docstring of the class body."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        names = tuple(namespace.get("__annotations__", {}))
        defaults = [namespace[n] for n in names if n in namespace]
        cls = collections.namedtuple(name, names, defaults=defaults,  # type: ignore[misc]
                                     module=namespace["__module__"])
        for key, value in namespace.items():
            if key not in names and key not in ("__module__", "__annotations__"):
                setattr(cls, key, value)
        return cls


if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field
    from typing import NamedTuple
else:
    record = _record
    field = _field
    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
