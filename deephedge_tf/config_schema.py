"""A small typed-config mechanism: dataclasses whose fields carry docs, units and allowed ranges.

A config section is a frozen dataclass whose fields are declared with :func:`param` (a leaf) or
:func:`section` (a nested section).  :func:`build` turns a plain mapping (parsed YAML) into such an
object, checking every key against the schema:

* unknown keys are rejected (with a "did you mean" suggestion for misspellings);
* values must have the declared type (``bool`` is never accepted as a number; ``int`` is accepted
  for ``float``; strings such as ``"1e-4"``, which YAML 1.1 does not read as numbers, are accepted
  for ``float`` fields);
* numeric ranges (``ge``, ``gt``, ``le``, ``lt``), choices and list lengths are checked;
* a section may define ``check(self, key)`` for rules that involve several fields.

Every failure raises :class:`~deephedge_tf.errors.ConfigError` naming the full key path, the value and
what is allowed.  :func:`describe` renders the schema (defaults, units, ranges, docs) as a Markdown
table, which is how the configuration reference in docs/configuration.md is produced.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Mapping

from deephedge_tf.errors import ConfigError

_MISSING = dataclasses.MISSING


def param(default=_MISSING, doc: str = "", *, units: str = "", ge=None, gt=None, le=None, lt=None,
          choices=None, min_len=None, max_len=None):
    """A leaf config field.  ``default=_MISSING`` makes the key required.

    List defaults are given as tuples (immutable); YAML lists are accepted for them.
    """
    meta = dict(doc=doc, units=units, ge=ge, gt=gt, le=le, lt=lt, choices=choices,
                min_len=min_len, max_len=max_len)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls, doc: str = ""):
    """A nested config section, defaulting to ``cls()`` (all of its defaults)."""
    return dataclasses.field(default_factory=cls, metadata=dict(doc=doc, section=True))


def _join(key: str, name) -> str:
    return f"{key}.{name}" if key else str(name)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {float: "number", int: "integer", bool: "true/false", str: "string", dict: "mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _choices(meta) -> tuple:
    """A field's allowed values: a sequence, or a function returning one (a registry's kinds, which
    grow when a user registers more)."""
    choices = meta.get("choices")
    return tuple(choices() if callable(choices) else choices)


def _range_text(meta) -> str:
    parts = []
    for op, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(op) is not None:
            parts.append(f"{sym} {meta[op]}")
    if meta.get("choices"):
        parts.append("one of " + ", ".join(repr(c) for c in _choices(meta)))
    if meta.get("min_len") is not None:
        parts.append(f"at least {meta['min_len']} entries")
    if meta.get("max_len") is not None:
        parts.append(f"at most {meta['max_len']} entries")
    return " and ".join(parts)


def _check_scalar(value, tp, meta, key):
    """Converts and range-checks one scalar value of type ``tp``."""
    allowed = _type_name(tp)
    rng = _range_text(meta or {})
    if rng:
        allowed = f"{allowed}, {rng}"
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, allowed)
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, value, allowed) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, allowed)
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(key, value, "a finite " + allowed)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, allowed)
    elif tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(key, value, "a mapping of parameter names to values")
        return dict(value)
    elif typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, value, allowed)
        return value
    else:  # pragma: no cover - schema authoring error
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    if meta:
        if meta.get("gt") is not None and not value > meta["gt"]:
            raise ConfigError(key, value, allowed)
        if meta.get("ge") is not None and not value >= meta["ge"]:
            raise ConfigError(key, value, allowed)
        if meta.get("lt") is not None and not value < meta["lt"]:
            raise ConfigError(key, value, allowed)
        if meta.get("le") is not None and not value <= meta["le"]:
            raise ConfigError(key, value, allowed)
        if meta.get("choices") is not None and value not in _choices(meta):
            raise ConfigError(key, value, allowed)
    return value


def _convert(value, tp, meta, key):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], meta, key)
    if value is None:
        raise ConfigError(key, value, _type_name(tp) + (f", {_range_text(meta)}" if _range_text(meta) else ""))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"a list of {_type_name(item_tp)}")
        if meta.get("min_len") is not None and len(value) < meta["min_len"]:
            raise ConfigError(key, value, f"a list with at least {meta['min_len']} entries")
        if meta.get("max_len") is not None and len(value) > meta["max_len"]:
            raise ConfigError(key, value, f"a list with at most {meta['max_len']} entries")
        item_meta = {k: v for k, v in meta.items() if k not in ("min_len", "max_len")}
        return tuple(_convert(v, item_tp, item_meta, f"{key}[{i}]") for i, v in enumerate(value))
    return _check_scalar(value, tp, meta, key)


def build(cls, data: Mapping[str, Any] | None, key: str = ""):
    """Builds config section ``cls`` from a mapping, validating every key (see module doc)."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(key or "<root>", data, f"a mapping of keys for section '{cls.__name__}'")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(_join(key, name), data[name],
                              f"a known key of '{key or '<root>'}': {', '.join(fields)}{hint}")
    kwargs = {}
    for name, f in fields.items():
        k = _join(key, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f.metadata, k)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(k, None, "a value (this key is required)")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(key)
    return obj


def to_dict(obj) -> dict:
    """Plain, YAML-serialisable dict of a config object (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        out[f.name] = v
    return out


def describe(cls, key: str = "") -> list[dict]:
    """Rows ``{key, type, default, units, allowed, doc}`` for every leaf of the schema."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        k = _join(key, f.name)
        if f.metadata.get("section"):
            rows.append(dict(key=k, type="section", default="", units="", allowed="",
                             doc=f.metadata.get("doc", "")))
            rows.extend(describe(hints[f.name], k))
            continue
        default = "(required)" if f.default is _MISSING else f.default
        if isinstance(default, tuple):
            default = list(default)
        rows.append(dict(key=k, type=_type_name(hints[f.name]), default=default,
                         units=f.metadata.get("units", ""), allowed=_range_text(f.metadata),
                         doc=f.metadata.get("doc", "")))
    return rows


def describe_markdown(cls) -> str:
    """The schema as a Markdown table."""
    lines = ["| key | type | default | units | allowed | meaning |", "|---|---|---|---|---|---|"]
    for r in describe(cls):
        if r["type"] == "section":
            lines.append(f"| **{r['key']}** | section | | | | {r['doc']} |")
            continue
        default = "null" if r["default"] is None else r["default"]
        cells = [f"`{r['key']}`", r["type"], f"`{default}`", r["units"], r["allowed"], r["doc"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def set_by_path(data: dict, dotted: str, value) -> None:
    """Sets ``data[a][b] = value`` for ``dotted = "a.b"``, creating intermediate mappings."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(dotted, value, "a dotted key path such as 'market.heston.rho'")
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(".".join(parts[: i + 1]), nxt, "a section (mapping) to set sub-keys in")
        node = nxt
    node[parts[-1]] = value
