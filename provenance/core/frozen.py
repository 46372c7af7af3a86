"""Immutable value objects in plain Python: what `prov verify` loads has no dataclasses (inspect,
ast, dis) or typing on its path, and these cost nothing to define at import."""

from __future__ import annotations


class Frozen:
    """Fields are the subclass's __slots__; equality, hash and repr go by them; `replace` copies
    with changes. A subclass's __init__ names its fields and defaults and calls `_init(locals())`."""

    __slots__ = ()

    def _init(self, values: dict) -> None:
        for f in self.__slots__:
            object.__setattr__(self, f, values[f])

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable: use replace({name}=...)")

    __delattr__ = __setattr__

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"

    def __reduce__(self):  # pickled by its fields, in __slots__ order (worker processes, Ray)
        return type(self), self._key()

    def replace(self, **changes):
        return type(self)(**{**{f: getattr(self, f) for f in self.__slots__}, **changes})
