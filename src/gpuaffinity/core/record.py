"""Light records: what the standard ``dataclasses`` module gives the types here, without its import cost.

``import dataclasses`` loads ``inspect``, which loads ``ast``, ``dis``, ``tokenize``, ``enum`` and ``re``:
about 10 ms of a fresh process's first ``resolve`` (tools/profile_first_call.py), most of what a
command-line call spends beyond the interpreter.  The types of the resolution path need only this much:

* ``@record`` / ``@record(frozen=True)`` on a class with annotated fields: an ``__init__`` taking the
  fields in order (defaults and ``field(default_factory=…)`` as in dataclasses), ``__repr__``,
  ``__eq__`` over the compared fields, ``__hash__`` when frozen, ``__match_args__``, and for frozen
  records assignment refused with ``FrozenError`` (an ``AttributeError``).  ``__post_init__`` runs when
  defined.  Field names come from the class's own annotations (strings under ``from __future__ import
  annotations``; never evaluated).
* ``replace(obj, **changes)``, ``asdict(obj)`` (records, lists, tuples and dicts inside copied
  recursively), ``fields(obj_or_class)`` (the names, in order).

tests/test_record.py holds each of these against ``dataclasses`` itself.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

_MISSING = object()


class FrozenError(AttributeError):
    """Assignment to a field of a frozen record."""


class Field:
    __slots__ = ("name", "default", "default_factory", "repr", "compare")

    def __init__(self, default: Any = _MISSING, default_factory: Any = _MISSING, repr: bool = True,
                 compare: bool = True) -> None:
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("a field takes a default or a default_factory, not both")
        self.name = ""
        self.default, self.default_factory, self.repr, self.compare = default, default_factory, repr, compare


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING, repr: bool = True,
          compare: bool = True) -> Any:
    return Field(default, default_factory, repr, compare)


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def _build(cls: type, frozen: bool) -> type:
    own = cls.__dict__.get("__annotations__", {})
    inherited: list[Field] = list(getattr(cls, "__record_fields__", ()))
    names = [f.name for f in inherited]
    specs: list[Field] = [f for f in inherited]
    for name, kind in own.items():
        if isinstance(kind, str) and kind.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _MISSING)
        spec = value if isinstance(value, Field) else Field(default=value)
        spec.name = name
        if isinstance(value, Field):
            if spec.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        if name in names:
            specs[names.index(name)] = spec
        else:
            names.append(name)
            specs.append(spec)
    space: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, body, seen_default = [], [], False
    for f in specs:
        if f.default is not _MISSING:
            space[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
            seen_default = True
        elif f.default_factory is not _MISSING:
            space[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            body.append(f"    if {f.name} is _MISSING: {f.name} = _f_{f.name}()")
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {f.name!r} without a default follows one with a default")
        else:
            params.append(f.name)
        body.append(f"    _set(self, {f.name!r}, {f.name})" if frozen else f"    self.{f.name} = {f.name}")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    exec(source, space)
    init = space["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    shown = tuple(f.name for f in specs if f.repr)
    compared = tuple(f.name for f in specs if f.compare)

    def __repr__(self: Any) -> str:
        return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in compared)

    cls.__init__ = init
    cls.__record_fields__ = tuple(specs)
    cls.__match_args__ = tuple(names)
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__
    if "__eq__" not in cls.__dict__:
        cls.__eq__ = __eq__
    if frozen:
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_delattr
        if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
            cls.__hash__ = lambda self: hash(tuple(getattr(self, n) for n in compared))
    elif "__hash__" not in cls.__dict__ or cls.__dict__.get("__hash__") is None:
        cls.__hash__ = None  # mutable and compared by value: unhashable, as a dataclass with eq is
    return cls


def record(cls: type[T] | None = None, *, frozen: bool = False) -> Any:
    """Make ``cls`` a record (see the module's docstring); ``@record`` or ``@record(frozen=True)``."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record or record class, in order."""
    return tuple(f.name for f in obj.__record_fields__)


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with some fields changed (every field passes through ``__init__``)."""
    values = {f.name: getattr(obj, f.name) for f in obj.__record_fields__}  # type: ignore[attr-defined]
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: Any, factory: Callable[[list[tuple[str, Any]]], Any] = dict) -> Any:
    """A record as a dict, records, lists, tuples and dicts inside it copied recursively."""
    return factory([(f.name, _copy(getattr(obj, f.name))) for f in obj.__record_fields__])


def _copy(value: Any) -> Any:
    if hasattr(type(value), "__record_fields__"):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {_copy(k): _copy(v) for k, v in value.items()}
    return value
