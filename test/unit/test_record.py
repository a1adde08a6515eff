"""passt.record: records and named tuples behave as dataclasses and typing's do."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from passt.record import NamedTuple, field, fields, record, replace


@record(frozen=True, slots=True)
class Frozen:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    hidden: int = field(default=0, repr=False, compare=False)


@record
class Plain:
    a: int
    b: int = 2

    def total(self) -> int:
        return self.a + self.b


@record(frozen=True, slots=True)
class Derived:
    """Has a field that ``__init__`` does not take, set by ``__post_init__``."""

    a: int
    double: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "double", 2 * self.a)


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    a: int
    b: str = "b"
    c: list[int] = dataclasses.field(default_factory=list)
    hidden: int = dataclasses.field(default=0, repr=False, compare=False)


def test_init_positional_keywords_defaults_and_factories() -> None:
    x = Frozen(1, c=[3])
    assert (x.a, x.b, x.c, x.hidden) == (1, "b", [3], 0)
    assert Frozen(1).c is not Frozen(1).c
    assert Plain(1).total() == 3
    with pytest.raises(TypeError):
        Frozen()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Frozen(1, nope=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Frozen(1, a=2)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Plain(1, 2, 3)  # type: ignore[call-arg]


def test_repr_eq_hash_as_dataclasses() -> None:
    assert repr(Frozen(1, "x", [2], 5)) == repr(Reference(1, "x", [2], 5)).replace(
        "Reference", "Frozen")
    assert Frozen(1, hidden=1) == Frozen(1, hidden=2)
    assert Frozen(1) != Frozen(2)
    assert Frozen(1) != Reference(1)
    assert hash(Derived(3)) == hash(Derived(3))
    assert Plain(1) == Plain(1)
    with pytest.raises(TypeError):
        hash(Plain(1))  # mutable with equality: unhashable, as a dataclass


def test_frozen_and_slots() -> None:
    x = Frozen(1)
    with pytest.raises(AttributeError):
        x.a = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del x.a  # type: ignore[misc]
    assert not hasattr(x, "__dict__")
    assert Frozen.__slots__ == ("a", "b", "c", "hidden")
    p = Plain(1)
    p.a = 5
    p.other = 1  # type: ignore[attr-defined]  # no slots asked for: a __dict__
    assert p.total() == 7


def test_post_init_replace_fields() -> None:
    d = Derived(4)
    assert d.double == 8
    assert repr(d) == "Derived(a=4)"
    assert replace(d, a=5).double == 10
    assert replace(Frozen(1, "x"), a=2) == Frozen(2, "x")
    assert fields(Frozen) == ("a", "b", "c", "hidden")


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: bytes | None = None

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


class TypingPoint(typing.NamedTuple):
    x: int
    y: int = 0
    label: bytes | None = None


def test_named_tuple_as_typing() -> None:
    p = Point(1, -2)
    assert p == (1, -2, None) == TypingPoint(1, -2)
    assert repr(p) == "Point(x=1, y=-2, label=None)"
    assert p.norm1 == 3
    assert p._replace(y=5).y == 5
    assert Point._fields == TypingPoint._fields
    assert Point._field_defaults == TypingPoint._field_defaults
    assert Point.__doc__ == "A point."
    assert Point.__module__ == __name__
    assert isinstance(p, tuple)
