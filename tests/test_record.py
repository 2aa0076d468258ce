"""gpuaffinity.core.record against the standard dataclasses it stands in for (same classes, both ways), then its
own rules one by one: which annotations are fields, defaults and inheritance, its own or a generated __eq__,
__hash__ and __repr__, frozen records, asdict, replace and field()."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import typing
from typing import ClassVar

import pytest

from gpuaffinity.core import record as rec


def twins(frozen: bool):
    """The same class body made a record and a dataclass."""
    made = []
    for deco, fld in ((rec.record(frozen=frozen), rec.field), (dataclasses.dataclass(frozen=frozen),
                                                                 dataclasses.field)):
        class Point:
            x: int
            y: str = "a"
            tags: list = fld(default_factory=list)
            note: str = fld(default="", compare=False, repr=False)

            def total(self) -> str:
                return f"{self.x}{self.y}"

        made.append(deco(Point))
    return made


@pytest.mark.parametrize("frozen", [False, True])
def test_a_record_behaves_as_the_dataclass_does(frozen):
    R, D = twins(frozen)
    for args, kwargs in [((1,), {}), ((1, "b"), {}), ((), {"x": 2, "tags": [1]}), ((3, "c", [2], "n"), {})]:
        r, d = R(*args, **kwargs), D(*args, **kwargs)
        assert repr(r).replace("Point", "") == repr(d).replace("Point", "")
        assert (r.x, r.y, r.tags, r.note) == (d.x, d.y, d.tags, d.note)
        assert rec.asdict(r) == dataclasses.asdict(d)
        assert rec.fields(r) == tuple(f.name for f in dataclasses.fields(d))
        assert R.__match_args__ == D.__match_args__
        assert r.total() == d.total()
    assert R(1) == R(1, note="other") and R(1) != R(2) and R(1) != "R(1)"  # note is not compared
    assert R(1).tags is not R(1).tags  # a fresh list each time
    for bad in [(), (1, 2, 3, 4, 5)]:
        with pytest.raises(TypeError):
            R(*bad)
        with pytest.raises(TypeError):
            D(*bad)
    with pytest.raises(TypeError):
        R(1, z=2)
    if frozen:
        r = R(1)
        with pytest.raises(AttributeError) as caught:
            r.x = 2
        assert isinstance(caught.value, rec.FrozenError) and r.x == 1
        with pytest.raises(AttributeError):
            del r.y
        assert hash(R(1, tags=())) == hash(R(1, tags=(), note="x"))
        assert {R(1, tags=()): "a"}[R(1, tags=())] == "a"
    else:
        r = R(1)
        r.x = 5
        assert r.x == 5
        with pytest.raises(TypeError):
            hash(r)  # mutable and compared by value: unhashable, as the dataclass is
        with pytest.raises(TypeError):
            hash(D(1))


def test_replace_and_asdict():
    R, D = twins(True)
    r = R(1, "b", [R(2)])
    s = rec.replace(r, y="z")
    assert (s.x, s.y, s.tags) == (1, "z", r.tags) and r.y == "b"
    with pytest.raises(TypeError, match="no field 'nope'"):
        rec.replace(r, nope=1)
    d = rec.asdict(r)
    assert d == {"x": 1, "y": "b", "tags": [{"x": 2, "y": "a", "tags": [], "note": ""}], "note": ""}
    d["tags"].append(0)
    assert len(r.tags) == 1  # copied, not shared


def test_defaults_in_the_wrong_order_and_both_defaults_refused():
    with pytest.raises(TypeError, match="without a default follows"):
        @rec.record
        class Bad:
            a: int = 1
            b: int
    with pytest.raises(ValueError, match="not both"):
        rec.field(default=1, default_factory=list)


def test_inheritance_post_init_and_pickle():
    @rec.record(frozen=True)
    class Base:
        a: int
        b: int = 2

    @rec.record(frozen=True)
    class Child(Base):
        c: int = 3

    assert rec.fields(Child) == ("a", "b", "c") and Child(1).c == 3 and Child(1, 5, 6).b == 5
    seen = []

    @rec.record
    class Hooked:
        a: int

        def __post_init__(self) -> None:
            seen.append(self.a)

    Hooked(7)
    assert seen == [7]
    from gpuaffinity.core.model import GpuInfo, MigInfo, PhysicalDevice

    g = GpuInfo(0, "GPU-1", "0000:01:00.0", "H100", (MigInfo("MIG-1", 1, 0),), True)
    assert pickle.loads(pickle.dumps(g)) == g
    dev = PhysicalDevice(0, 1, "GPU-1", "0000:01:00.0", None, "H100", "pci", ("pci",), (), False)
    assert dev.to_dict()["agreed"] == ["pci"] and "verdicts" not in dev.to_dict()


def test_the_resolution_path_loads_no_heavy_module():
    """What the records are for: a first resolve loads neither dataclasses, typing, re, json nor pathlib; nor
    does the module behind plan and bind."""
    code = ("import sys\nimport gpuaffinity.api, gpuaffinity.inventory, gpuaffinity.resolvers.pci\n"
            "import gpuaffinity.placement\n"
            "print(sorted({'dataclasses', 'typing', 're', 'json', 'pathlib', 'inspect', 'ctypes', 'enum'} "
            "& set(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}\n" + code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- record._build / record.field ------------------------------------------------------------------------------

def test_a_record_keeps_its_own_repr_and_hash():
    @rec.record(frozen=True)
    class P:
        x: int

        def __repr__(self):
            return "mine"

        def __hash__(self):
            return 7

    assert (repr(P(1)), hash(P(1)), P(1) == P(1), P(1) == P(2)) == ("mine", 7, True, False)


def test_a_frozen_record_that_defines_eq_gets_a_field_hash():
    @rec.record(frozen=True)
    class Q:
        x: int

        def __eq__(self, other):
            return True

    assert "__hash__" in Q.__dict__ and hash(Q(3)) == hash((3,)) and Q(3) == Q(4)


def test_classvar_annotations_are_not_fields_and_do_not_end_the_fields():
    @rec.record
    class C:
        a: int
        k: ClassVar[int] = 5
        b: str = "b"

    assert rec.fields(C) == ("a", "b") and C.k == 5
    assert (C(1).a, C(1).b, repr(C(1, "z")).rpartition("<locals>.")[2]) == (1, "b", "C(a=1, b='z')")


def test_a_subclass_without_annotations_inherits_the_fields():
    @rec.record
    class Base:
        a: int
        b: int = 2

    @rec.record
    class Sub(Base):
        def total(self):
            return self.a + self.b

    assert rec.fields(Sub) == ("a", "b") and Sub(1).total() == 3 and Sub(1, 5) == Sub(1, 5)


def test_field_compares_by_default():
    @rec.record
    class F:
        a: int
        b: int = rec.field(default=0)
        c: list = rec.field(default_factory=list)

    assert F(1, 2) != F(1, 3) and F(1, c=[1]) != F(1) and F(1, 2, [1]) == F(1, 2, [1])
    assert [f.compare for f in F.__record_fields__] == [True, True, True]


# --- record._build ----------------------------------------------------------------------------------------------

def test_a_subclass_may_redeclare_an_inherited_field_with_a_new_default():
    @rec.record
    class Base:
        a: int
        b: int = 2

    @rec.record
    class Sub(Base):
        b: int = 5

    assert rec.fields(Sub) == ("a", "b") and (Sub(1).a, Sub(1).b) == (1, 5) and Base(1).b == 2


def test_a_field_without_a_default_after_a_default_factory_is_refused():
    with pytest.raises(TypeError, match=r"^Late: field 'b' without a default follows one with a default$"):
        @rec.record
        class Late:
            a: list = rec.field(default_factory=list)
            b: int


def test_a_mutable_record_assigns_through_its_own_setattr():
    @rec.record
    class Doubled:
        a: int

        def __setattr__(self, name, value):
            object.__setattr__(self, name, value * 2)

    assert Doubled(3).a == 6


def test_a_frozen_record_refuses_deletion_naming_its_class():
    @rec.record(frozen=True)
    class P:
        x: int

    with pytest.raises(rec.FrozenError, match=r"^cannot delete field 'x' of a frozen P$"):
        del P(1).x


# --- record._build: a mutable record keeps its own __hash__; field() defaults become class attributes --------------

def test_a_mutable_record_keeps_its_own_hash():
    @rec.record
    class M:
        x: int

        def __hash__(self):
            return 11

    assert (hash(M(1)), M(1) == M(1), M(1) == M(2)) == (11, True, False)


def test_a_mutable_record_without_its_own_hash_is_unhashable():
    @rec.record
    class N:
        x: int

    assert N.__hash__ is None
    with pytest.raises(TypeError, match=r"^unhashable type: 'N'$"):
        hash(N(1))


def test_field_defaults_are_class_attributes_and_factories_are_not():
    @rec.record
    class F:
        a: int = rec.field(default=4)
        b: list = rec.field(default_factory=list)

    assert (F.__dict__.get("a"), "b" in F.__dict__) == (4, False)
    assert (F().a, F().b, F(1, [2]).b) == (4, [], [2])


# --- record._build: typing.ClassVar annotations are no fields; field() defaults are class attributes -------------

def test_a_typing_classvar_is_not_a_field():
    @rec.record
    class C:
        a: int
        k: typing.ClassVar[int] = 7

    assert (rec.fields(C), C(1).k, C(1) == C(1), repr(C(2)).endswith(".C(a=2)")) == (("a",), 7, True, True)
    with pytest.raises(TypeError):
        C(1, 2)


def test_a_field_default_is_the_class_attribute():
    @rec.record
    class F:
        a: int = rec.field(default=4)

    assert (F.__dict__.get("a"), F().a, F(5).a) == (4, 4, 5)


def test_a_record_without_fields_is_built_and_called():
    @rec.record
    class Empty:
        pass

    assert (Empty() == Empty(), repr(Empty()).endswith(".Empty()"), rec.fields(Empty)) == (True, True, ())


# --- record._copy / asdict: dict keys and values are copied through ---------------------------------------------

def test_asdict_copies_the_keys_and_values_of_a_dict():
    @rec.record(frozen=True)
    class K:
        x: int

    @rec.record
    class D:
        m: dict

    inner = [1, 2]
    got = rec.asdict(D({"k": inner, ("t", 1): K(2)}))
    assert got == {"m": {"k": [1, 2], ("t", 1): {"x": 2}}}
    assert got["m"]["k"] is not inner


# --- record: frozen assignment's message; record(cls, frozen=True) called directly; replace's and Field's ---------

def test_a_frozen_record_refuses_assignment_naming_field_and_class():
    @rec.record(frozen=True)
    class P:
        x: int

    with pytest.raises(rec.FrozenError, match=r"^cannot assign to field 'x' of a frozen P$"):
        P(1).x = 2


def test_record_called_with_a_class_and_frozen_makes_it_frozen():
    class Q:
        x: int

    rec.record(Q, frozen=True)
    with pytest.raises(rec.FrozenError, match=r"^cannot assign to field 'x' of a frozen Q$"):
        Q(1).x = 2
    assert hash(Q(1)) == hash(Q(1))


def test_replace_names_the_record_and_the_unknown_field():
    @rec.record
    class R:
        x: int

    with pytest.raises(TypeError, match=r"^R has no field 'z'$"):
        rec.replace(R(1), z=3)


def test_a_field_takes_one_default_and_has_no_name_until_a_record_names_it():
    with pytest.raises(ValueError, match=r"^a field takes a default or a default_factory, not both$"):
        rec.field(default=1, default_factory=list)
    assert rec.field(default=1).name == ""
