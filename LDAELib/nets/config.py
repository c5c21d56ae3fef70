"""Network settings as dataclasses that round-trip through JSON (tuples ↔ lists)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


def config_to_dict(config: Any) -> dict:
    """A dataclass → JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(cls: type[T], d: Mapping, what: str, ignored: Iterable[str] = ()) -> T:
    """A dict (from JSON or the authors' YAML) → dataclass ``cls``; lists become tuples.

    Keys in ``ignored`` are accepted and dropped (settings whose value is fixed by the design);
    any other unknown key is an error, so a typo in a config file does not pass silently.
    """
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names - set(ignored)
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
    return cls(**kw)
