"""Operator state as data: what one process hands another, decoded against the reader's own app.

A value is encoded as a tree of msgpack values: numbers, strings and bytes as themselves, every
container and object as a list whose first item says what it is (``[_LIST, ...]``,
``[_ARRAY, dtype, shape, bytes]``, ``[_OBJECT, class name, [[attribute, value], ...]]``). Decoding
walks the tree next to a *template*, the reading process's own value at the same place (for an
operator: the prototype the app registered): every object is a copy of the template's, of its
class, containers take the template's type (a ``defaultdict`` keeps its factory), and functions
are the template's. Nothing in the bytes names code to import or call, so bytes from another
process (or from anyone who can write where they are read) can give wrong numbers at worst, never
run code: unlike a pickle. A tree that does not fit its template is refused with the reason.
"""

from __future__ import annotations

import copy
import functools
import types
from collections import defaultdict
from typing import Any

import msgspec
import numpy as np

from .errors import CheckpointError

__all__ = ["encode_state", "decode_state", "StateShapeError"]

_LIST, _TUPLE, _DICT, _SET, _FROZENSET, _ARRAY, _SCALAR, _OBJECT, _FROM_APP, _BIG_INT = range(10)
_PLAIN = frozenset((bool, int, float, str, bytes, type(None)))
_NUMERIC_KINDS = frozenset("biufc")  # numpy arrays of bools and numbers only: no object arrays
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type, types.ModuleType, functools.partial)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class StateShapeError(CheckpointError):
    """Encoded state that does not fit the reading app's operator (another app, or another version of it)."""


def encode_state(value: Any) -> bytes:
    """``value`` (an operator, or plain data holding some) as bytes for :func:`decode_state`."""
    try:
        return _encode(_tree(value))
    except RecursionError:
        raise StateShapeError("it refers to itself (a reference cycle) or nests too deep to be encoded") from None


def decode_state(data: bytes, template: Any = None) -> Any:
    """What :func:`encode_state` encoded, rebuilt after ``template`` (see the module docstring).

    Raises :class:`StateShapeError` naming where the data and the template part ways.
    """
    try:
        return _build(_decode(data), template, "the state")
    except msgspec.DecodeError as exc:
        raise StateShapeError(f"it is not encoded state ({exc})") from None
    except RecursionError:
        raise StateShapeError("it nests too deep to be decoded") from None


def _tree(obj: Any) -> Any:
    kind = type(obj)
    if obj is None or kind in (bool, float, str, bytes):
        return obj
    if kind is int:
        return obj if -(1 << 63) <= obj < (1 << 64) else [_BIG_INT, str(obj)]  # msgpack holds 64 bits
    if kind is list:
        return [_LIST, *map(_tree, obj)]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise StateShapeError(f"a numpy array of {obj.dtype} cannot be encoded (numbers and bools only)")
        return [_ARRAY, obj.dtype.str, list(obj.shape), np.ascontiguousarray(obj).tobytes()]
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise StateShapeError(f"a numpy {obj.dtype} cannot be encoded (numbers and bools only)")
        return [_SCALAR, obj.dtype.str, obj.tobytes()]
    if isinstance(obj, tuple):  # named tuples too: rebuilt as the template's type
        return [_TUPLE, *map(_tree, obj)]
    if isinstance(obj, dict):
        return [_DICT, *([_tree(k), _tree(v)] for k, v in obj.items())]
    if isinstance(obj, frozenset):
        return [_FROZENSET, *map(_tree, obj)]
    if isinstance(obj, set):
        return [_SET, *map(_tree, obj)]
    if isinstance(obj, list):  # a list subclass: its items, typed by the template
        return [_LIST, *map(_tree, obj)]
    if isinstance(obj, (bool, int, float, str, bytes)):  # subclasses (an IntEnum, a str enum): their plain value
        return _tree(_plain(obj))
    if isinstance(obj, _FUNCTIONS):
        return [_FROM_APP]  # the reader's own function at this place
    return [_OBJECT, type(obj).__qualname__, [[name, _tree(value)] for name, value in _attributes(obj)]]


def _plain(obj: Any) -> Any:
    bases: tuple[Any, ...] = (bool, int, float, str, bytes)
    return next(base(obj) for base in bases if isinstance(obj, base))


_SLOTS: dict[type, tuple[str, ...]] = {}


def _slots_of(cls: type) -> tuple[str, ...]:
    slots = _SLOTS.get(cls)
    if slots is None:
        slots = _SLOTS[cls] = tuple(name for c in cls.__mro__ for name in getattr(c, "__slots__", ())
                                    if name not in ("__dict__", "__weakref__"))
    return slots


def _attributes(obj: Any) -> list[tuple[str, Any]]:
    found = [(name, getattr(obj, name)) for name in _slots_of(type(obj)) if hasattr(obj, name)]
    return found + list(getattr(obj, "__dict__", {}).items())


def _build(node: Any, template: Any, where: str) -> Any:
    if not isinstance(node, list):
        if node is None or isinstance(node, (bool, int, float, str, bytes)):
            return node
        raise StateShapeError(f"{where}: unexpected {type(node).__name__}")
    if not node or not isinstance(node[0], int):
        raise StateShapeError(f"{where}: not a tagged value")
    tag, items = node[0], node[1:]
    if tag in (_LIST, _TUPLE):
        if not all(type(item) in _PLAIN for item in items):
            built = [_build(item, _item_template(template, i), f"{where}[{i}]") for i, item in enumerate(items)]
        else:  # numbers and strings only, as most lists are: nothing to rebuild
            built = items
        if tag == _LIST:
            return type(template)(built) if isinstance(template, list) and type(template) is not list else built
        if isinstance(template, tuple) and hasattr(template, "_fields"):
            return type(template)(*built)
        return tuple(built)
    if tag == _DICT:
        return _build_dict(items, template, where)
    if tag in (_SET, _FROZENSET):
        members = [_build(item, None, f"{where} member") for item in items]
        return frozenset(members) if tag == _FROZENSET else set(members)
    if tag == _ARRAY:
        return _build_array(items, where)
    if tag == _SCALAR:
        dtype = _numeric_dtype(items[0] if items else None, where)
        if len(items) != 2 or not isinstance(items[1], bytes) or len(items[1]) != dtype.itemsize:
            raise StateShapeError(f"{where}: a malformed numpy scalar")
        return np.frombuffer(items[1], dtype=dtype)[0]
    if tag == _BIG_INT:
        if len(items) != 1 or not isinstance(items[0], str) or not (items[0].isascii() and items[0].lstrip("-").isdigit()) or len(items[0]) > 5000:
            raise StateShapeError(f"{where}: a malformed integer")
        return int(items[0])
    if tag == _FROM_APP:
        if template is None:
            raise StateShapeError(f"{where}: a function of the writer's app that this app has no counterpart for")
        return template
    if tag == _OBJECT:
        return _build_object(items, template, where)
    raise StateShapeError(f"{where}: unknown tag {tag}")


def _item_template(template: Any, i: int) -> Any:
    if isinstance(template, (list, tuple)) and template:
        return template[i] if i < len(template) else template[-1]
    return None


def _build_dict(items: list, template: Any, where: str) -> dict:
    if isinstance(template, defaultdict):
        out: dict = defaultdict(template.default_factory)
        sample = template.default_factory() if template.default_factory is not None else None
    else:
        out = type(template)() if isinstance(template, dict) else {}
        sample = next(iter(template.values()), None) if isinstance(template, dict) else None
    for pair in items:
        if not isinstance(pair, list) or len(pair) != 2:
            raise StateShapeError(f"{where}: a malformed mapping")
        key, value = pair
        if type(key) is list:
            key = _build(key, None, f"{where} key")
            if isinstance(key, (list, dict, set)):
                raise StateShapeError(f"{where}: an unhashable key")
        if type(value) is list:
            held = dict.get(template, key, sample) if isinstance(template, dict) else sample
            value = _build(value, held, f"{where}[{key!r}]")
        elif not (value is None or isinstance(value, (bool, int, float, str, bytes))):
            raise StateShapeError(f"{where}[{key!r}]: unexpected {type(value).__name__}")
        dict.__setitem__(out, key, value)
    return out


def _numeric_dtype(code: Any, where: str) -> np.dtype:
    try:
        dtype = np.dtype(code) if isinstance(code, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise StateShapeError(f"{where}: {code!r} is not a numeric numpy type")
    return dtype


def _build_array(items: list, where: str) -> np.ndarray:
    if len(items) != 3 or not isinstance(items[1], list) or not isinstance(items[2], bytes):
        raise StateShapeError(f"{where}: a malformed numpy array")
    dtype = _numeric_dtype(items[0], where)
    shape = items[1]
    if not all(isinstance(n, int) and n >= 0 for n in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(items[2]):
        raise StateShapeError(f"{where}: a numpy array whose shape does not match its bytes")
    return np.frombuffer(items[2], dtype=dtype).reshape(shape).copy()  # owned and writable


def _build_object(items: list, template: Any, where: str) -> Any:
    if len(items) != 2 or not isinstance(items[0], str) or not isinstance(items[1], list):
        raise StateShapeError(f"{where}: a malformed object")
    name, attributes = items
    if template is None or isinstance(template, (type(None), bool, int, float, str, bytes, list, tuple, dict, set)):
        raise StateShapeError(f"{where}: a {name} where this app's operator holds no object to rebuild it after")
    if type(template).__qualname__ != name:
        raise StateShapeError(f"{where}: a {name} where this app's operator holds a {type(template).__qualname__} "
                              f"(another app, or another version of the operator)")
    obj = copy.copy(template)  # of the template's class, its __init__ not run again
    written = set()
    for pair in attributes:
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str):
            raise StateShapeError(f"{where}: a malformed attribute of a {name}")
        attribute, value = pair
        if type(value) is list:
            value = _build(value, getattr(template, attribute, None), f"{where}.{attribute}")
        elif not (value is None or isinstance(value, (bool, int, float, str, bytes))):
            raise StateShapeError(f"{where}.{attribute}: unexpected {type(value).__name__}")
        object.__setattr__(obj, attribute, value)
        written.add(attribute)
    if written.issuperset(getattr(template, "__dict__", ())) and written.issuperset(_slots_of(type(template))):
        return obj  # as usual: the writer had every attribute the template has
    for attribute, value in _attributes(template):
        if attribute not in written:  # one the writer's version did not have: the template's own, not shared
            object.__setattr__(obj, attribute, copy.deepcopy(value))
    return obj
