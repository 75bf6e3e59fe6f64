"""The machinery of a findings record: the `Finding` base class, its JSON form, and rebuilding a typed
record from JSON, where a missing or unknown field fails loudly, naming it."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar


def plain(v: Any) -> Any:
    """`v` as JSON-able Python values (numpy/torch scalars -> numbers, tuples -> lists, keys -> str)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return plain(dataclasses.asdict(v))
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def signed_list(values, fmt: str = "+.3f") -> str:
    """'+0.120, -0.031' : numbers joined for a sentence."""
    return ", ".join(f"{v:{fmt}}" for v in values)


def times_list(values, fmt: str) -> str:
    """'2.1x, 0.9x' : ratios joined for a sentence."""
    return ", ".join(f"{v:{fmt}}x" for v in values)


def _build(tp: Any, v: Any, where: str) -> Any:
    """A JSON value back as type `tp`: nested records, dict keys (JSON makes them str) and lists."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_values(tp, v, where)
    if origin is dict:
        kt, vt = typing.get_args(tp)
        return {(kt(k) if kt in (int, str) else k): _build(vt, x, f"{where}[{k!r}]") for k, x in v.items()}
    if origin is list:
        (vt,) = typing.get_args(tp)
        return [_build(vt, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin in (typing.Union, types.UnionType) and v is not None:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], v, where) if len(inner) == 1 else v
    return v


def from_values(cls: type, values: dict, where: str = "") -> Any:
    """`cls(**values)` with nested types rebuilt; a missing or unknown field raises, naming it."""
    where = where or cls.__name__
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected the fields of {cls.__name__}, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values]
    unknown = sorted(set(values) - set(names))
    if missing or unknown:
        raise ValueError(
            f"{where} ({cls.__name__}): "
            + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            )
            + "; rerun the notebook that records it"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{n: _build(hints[n], values[n], f"{where}.{n}") for n in names})


@dataclass(frozen=True)
class Finding:
    """A finding's record: subclasses set `key` (its name in the findings file) and `notebook`."""

    key: ClassVar[str] = ""
    notebook: ClassVar[str] = ""

    def sentences(self) -> list[str]:
        """The README bullet(s) of this finding, without the leading '- '."""
        raise NotImplementedError

    def summary(self) -> str:
        """The same sentences for a notebook's output (markdown emphasis dropped)."""
        return "\n".join(s.replace("**", "") for s in self.sentences())

    def __str__(self) -> str:
        return self.summary()

    def to_json(self) -> dict:
        return {"type": type(self).__name__, "values": plain(self)}
