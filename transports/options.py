"""One option schema and one parser for every transport.

A transport declares its options once, as a class attribute
(:attr:`fspl_gateway.transports.base.Transport.options_schema`, an :class:`OptionSchema`
of :class:`Option` entries: name, type, default, help text, unit, secret flag and
environment fallback).  :class:`~fspl_gateway.transports.base.Transport` parses the
options it is given through that schema before the subclass sees them, so a
third-party transport gets the same parser, the same errors and generated documentation
by declaring its list; a transport that declares none gets its options as given.  The
README's option tables are generated from the same lists (:func:`docs_main`, run by
``scripts/gen-option-docs``; a test fails when they differ).

Values come as strings (``-o key=value``), or as TOML strings, numbers and booleans
(the config file); already parsed values parse to themselves.  The rules, the same for
every transport:

* **size** — bytes: a plain number, or with a unit: ``KiB``/``MiB``/``GiB``/``TiB`` and
  the short ``K``/``M``/``G``/``T`` are binary (``8MiB`` = ``8M`` = 8,388,608), ``kB``/
  ``MB``/``GB``/``TB`` are decimal (``8MB`` = 8,000,000), ``B`` is bytes; case does not
  matter, a fraction is allowed (``1.5MiB``).
* **duration** — seconds: a plain number **always means seconds**, or with a unit:
  ``ms``, ``s``, ``m``, ``h``, ``d`` (``90``, ``90s``, ``1.5m``, ``1h``).
* **bool** — ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``.
* **int**, **float** — numbers, within the option's bounds.
* **path** — ``~`` is expanded; options that take several accept a comma-separated list.
* **choice** — one of the listed words (case-insensitive).
* **str** — any text (surrounding blanks removed).

An empty value (``-o key=``) means "not set": the environment fallback, else the
default.  An unknown key is a :class:`~fspl_gateway.core.errors.ConfigError` (exit 2)
naming the closest valid key; a bad value is a one-line ConfigError naming the option and
what it takes (a secret's value is never repeated).  A *deprecated* option is accepted
with a warning and ignored.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.log import get_logger
from fspl_gateway.core.redact import add_secret

log = get_logger(__name__)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB


class OptionType(StrEnum):
    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    SIZE = "size"
    DURATION = "duration"
    PATH = "path"
    CHOICE = "choice"


#: A check beyond the type: returns what is wrong with a parsed value, or None.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Option:
    """One transport option."""

    name: str
    type: OptionType
    help: str
    #: The parsed default (seconds for a duration, bytes for a size); None = unset.
    default: Any = None
    #: What the docs show as the default when it is computed ("boto3's chain").
    default_doc: str | None = None
    #: The unit of an int/float in the docs ("channels", "attempts"); sizes are bytes,
    #: durations seconds.
    unit: str = ""
    #: Credentials: never logged, masked in ``status`` and debug output, never repeated
    #: in an error message.
    secret: bool = False
    #: Environment variables read (first set one wins) when the option is not given.
    env: tuple[str, ...] = ()
    #: For ``CHOICE``: the words accepted.
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    #: ``PATH`` only: a comma-separated list; the value is a list of paths.
    multiple: bool = False
    check: Check | None = None
    #: Accepted and ignored with this warning (kept so that old configs still load).
    deprecated: str | None = None

    def expects(self) -> str:
        """What the option takes, for error messages and the docs."""
        t = self.type
        if t is OptionType.BOOL:
            return "true or false (yes/no, on/off, 1/0)"
        if t is OptionType.SIZE:
            return "a size such as 65536, 64KiB, 8MiB or 1GiB" + self._bounds(_fmt_size)
        if t is OptionType.DURATION:
            return ("a duration such as 30 (seconds), 30s, 10m or 1h"
                    + self._bounds(_fmt_duration))
        if t is OptionType.INT:
            return "a whole number" + self._bounds(lambda v: str(int(v)))
        if t is OptionType.FLOAT:
            return "a number" + self._bounds(lambda v: f"{v:g}")
        if t is OptionType.CHOICE:
            return "one of " + ", ".join(self.choices)
        if t is OptionType.PATH:
            return "a comma-separated list of paths" if self.multiple else "a path"
        return "a text"

    def _bounds(self, fmt: Callable[[float], str]) -> str:
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f" from {fmt(lo)} to {fmt(hi)}"
        if lo is not None:
            return f" of at least {fmt(lo)}"
        if hi is not None:
            return f" of at most {fmt(hi)}"
        return ""


class OptionValues(Mapping[str, Any]):
    """Parsed options: every option of the schema (given, else from the environment, else
    its default), and which of them the caller set (:attr:`given`)."""

    def __init__(self, values: Mapping[str, Any], given: Iterable[str] = ()) -> None:
        self._values = dict(values)
        self.given: frozenset[str] = frozenset(given)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def given_options(self) -> dict[str, Any]:
        """The options the caller set, parsed (what a wrapper passes on)."""
        return {k: self._values[k] for k in self._values if k in self.given}

    def __repr__(self) -> str:  # the values may hold secrets: show only the names
        return f"OptionValues(given={sorted(self.given)!r})"


class OptionSchema(Sequence[Option]):
    """The declared options of one transport (see the module doc)."""

    def __init__(self, *options: Option) -> None:
        seen: set[str] = set()
        for o in options:
            if o.name in seen:
                raise ValueError(f"option {o.name!r} declared twice")
            seen.add(o.name)
        self._options = tuple(options)
        self._by_name = {o.name: o for o in options}

    def __getitem__(self, i: Any) -> Any:
        return self._options[i]

    def __len__(self) -> int:
        return len(self._options)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Option | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return [o.name for o in self._options if o.deprecated is None]

    def __add__(self, other: object) -> OptionSchema:
        if not isinstance(other, OptionSchema):
            return NotImplemented
        return OptionSchema(*self._options, *other._options)

    def is_secret(self, name: str) -> bool | None:
        """True/False for a declared option, None for a name the schema does not know."""
        o = self._by_name.get(name)
        return None if o is None else o.secret

    def parse(self, raw: Mapping[str, Any], transport: str = "transport",
              environ: Mapping[str, str] | None = None) -> OptionValues:
        """Check and convert ``raw`` (see the module doc); ConfigError on the first
        unknown key or bad value."""
        env = os.environ if environ is None else environ
        for key in raw:
            if key not in self._by_name:
                raise ConfigError(self.unknown_message(str(key), transport))
        values: dict[str, Any] = {}
        given: set[str] = set()
        for o in self._options:
            v = raw.get(o.name)
            if o.deprecated is not None:
                if not _empty(v):
                    log.warning("%s option %s is deprecated and ignored: %s", transport,
                                o.name, o.deprecated)
                continue
            if not _empty(v):
                values[o.name] = parse_value(o, v, transport)
                given.add(o.name)
                continue
            for var in o.env:
                ev = env.get(var)
                if not _empty(ev):
                    values[o.name] = parse_value(o, ev, transport, source=f"${var}")
                    break
            else:
                values[o.name] = o.default
        for o in self._options:
            if o.secret and values.get(o.name) not in (None, ""):
                add_secret(values[o.name])  # masked in every output from now on
        return OptionValues(values, given)

    def unknown_message(self, key: str, transport: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        if not close:  # a prefix or a part of a longer name ("endpoint" → endpoint_url)
            close = [n for n in names if key and (n.startswith(key) or key in n)][:1]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(names) or "none"
        return f"unknown {transport} option {key!r}{hint} (known: {known})"


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


# -- values ----------------------------------------------------------------------------
_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i?)(b?)|(b?))$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_size(value: Any) -> int:
    """A size in bytes (see the module doc); ValueError if it is not one."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value != int(value) or value < 0:
            raise ValueError(value)
        return int(value)
    m = _SIZE_RE.match(str(value).strip())
    if not m:
        raise ValueError(value)
    n = float(m.group(1))
    prefix, binary, b = m.group(2), m.group(3), m.group(4)
    if not prefix:
        if n != int(n):
            raise ValueError(value)  # a fraction of a byte
        return int(n)
    # K, Ki, KiB → binary; KB, kB → decimal
    base = 1000 if (b and not binary) else 1024
    return int(n * base ** ("kmgt".index(prefix.lower()) + 1))


def parse_duration(value: Any) -> float:
    """A duration in seconds (see the module doc); ValueError if it is not one."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(value)
        return float(value)
    m = _DURATION_RE.match(str(value).strip())
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]


def parse_bool(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case); ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(value)


def _convert(o: Option, v: Any) -> Any:
    t = o.type
    if t is OptionType.BOOL:
        return parse_bool(v)
    if t is OptionType.SIZE:
        return parse_size(v)
    if t is OptionType.DURATION:
        return parse_duration(v)
    if t is OptionType.INT:
        if isinstance(v, bool):
            raise ValueError(v)
        if isinstance(v, float):
            if v != int(v):
                raise ValueError(v)
            return int(v)
        return int(v) if isinstance(v, int) else int(str(v).strip(), 10)
    if t is OptionType.FLOAT:
        if isinstance(v, bool):
            raise ValueError(v)
        f = float(v) if isinstance(v, int | float) else float(str(v).strip())
        if not math.isfinite(f):
            raise ValueError(v)
        return f
    if t is OptionType.CHOICE:
        s = str(v).strip().lower()
        for c in o.choices:
            if c.lower() == s:
                return c
        raise ValueError(v)
    if isinstance(v, bool | dict):
        raise ValueError(v)
    if t is OptionType.PATH:
        if isinstance(v, list | tuple):
            items = [str(x) for x in v]
        else:
            items = str(v).split(",") if o.multiple else [str(v)]
        paths = [os.path.expanduser(p.strip()) for p in items if p.strip()]
        if o.multiple:
            return paths
        if len(paths) != 1:
            raise ValueError(v)
        return paths[0]
    if isinstance(v, list | tuple):
        raise ValueError(v)
    return str(v).strip()


def parse_value(o: Option, v: Any, transport: str = "transport", source: str = "") -> Any:
    """One value of option ``o``, parsed; a one-line ConfigError if it does not fit."""
    where = f"{transport} option {o.name}" + (f" (from {source})" if source else "")
    shown = "a value that is not that" if o.secret else repr(v)
    try:
        out = _convert(o, v)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{where}: expected {o.expects()}, got {shown}") from None
    if o.type in (OptionType.INT, OptionType.FLOAT, OptionType.SIZE, OptionType.DURATION):
        if (o.minimum is not None and out < o.minimum) or \
                (o.maximum is not None and out > o.maximum):
            raise ConfigError(f"{where}: expected {o.expects()}, got {shown}")
    if o.check is not None:
        problem = o.check(out)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    return out


# -- documentation ---------------------------------------------------------------------
def _fmt_size(n: float) -> str:
    n = int(n)
    for unit, mult in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def _fmt_duration(s: float) -> str:
    for unit, mult in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= mult and s % mult == 0:
            return f"{int(s // mult)}{unit}"
    return f"{s:g}s"


def format_value(o: Option, v: Any) -> str:
    """A parsed value as a user would write it."""
    if v is None:
        return ""
    if o.type is OptionType.SIZE:
        return _fmt_size(v)
    if o.type is OptionType.DURATION:
        return _fmt_duration(v)
    if o.type is OptionType.BOOL:
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(v)
    return str(v)


def _value_doc(o: Option) -> str:
    t = o.type
    if t is OptionType.CHOICE:
        return " \\| ".join(f"`{c}`" for c in o.choices)
    if t is OptionType.PATH:
        return "paths" if o.multiple else "path"
    text = {OptionType.STR: "text", OptionType.INT: "integer", OptionType.FLOAT: "number",
            OptionType.BOOL: "bool", OptionType.SIZE: "size",
            OptionType.DURATION: "duration"}[t]
    fmt: Callable[[float], str] = (_fmt_size if t is OptionType.SIZE else
                                   _fmt_duration if t is OptionType.DURATION else
                                   (lambda v: f"{v:g}"))
    if o.minimum is not None and o.maximum is not None:
        text += f" {fmt(o.minimum)}–{fmt(o.maximum)}"
    elif o.minimum is not None:
        text += f" ≥ {fmt(o.minimum)}"
    elif o.maximum is not None:
        text += f" ≤ {fmt(o.maximum)}"
    if o.unit:
        text += f" ({o.unit})"
    return text


def _default_doc(o: Option) -> str:
    parts = [f"`${v}`" for v in o.env]
    if o.default_doc is not None:
        parts.append(o.default_doc)
    elif o.default is not None:
        parts.append(f"`{format_value(o, o.default)}`")
    return ", else ".join(parts) or "–"


def markdown_table(schema: OptionSchema) -> str:
    """The README table of ``schema`` (deprecated options last, marked)."""
    rows = ["| option | value | default | meaning |", "|---|---|---|---|"]
    ordered = [o for o in schema if o.deprecated is None] + \
        [o for o in schema if o.deprecated is not None]
    for o in ordered:
        meaning = o.help + (" Secret: never logged or shown." if o.secret else "")
        if o.deprecated is not None:
            rows.append(f"| `{o.name}` | – | – | deprecated, ignored: {o.deprecated} |")
            continue
        rows.append(f"| `{o.name}` | {_value_doc(o)} | {_default_doc(o)} | {meaning} |")
    return "\n".join(rows) + "\n"


_MARK_BEGIN = "<!-- BEGIN options:{name} (generated from the transport's option schema by scripts/gen-option-docs; do not edit) -->"
_MARK_END = "<!-- END options:{name} -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the marked section of transport ``name`` replaced by ``body``;
    ValueError if the markers are missing."""
    begin = _MARK_BEGIN.format(name=name)
    end = _MARK_END.format(name=name)
    i = text.find(begin)
    j = text.find(end, i + 1) if i >= 0 else -1
    if i < 0 or j < 0:
        raise ValueError(f"no section markers for the {name} options ({begin} … {end})")
    return text[:i + len(begin)] + "\n" + body + text[j:]


def documented_transports() -> dict[str, OptionSchema]:
    """The option schema of every registered transport that declares one."""
    from fspl_gateway.transports.base import available, load

    out: dict[str, OptionSchema] = {}
    for name in sorted(available()):
        schema = load(name).options_schema
        if schema is not None:
            out[name] = schema
    return out


def render_readme(text: str, schemas: Mapping[str, OptionSchema] | None = None) -> str:
    """``text`` (the README) with every transport's option table regenerated."""
    for name, schema in (schemas if schemas is not None else documented_transports()).items():
        text = replace_section(text, name, markdown_table(schema))
    return text


def docs_main(argv: Sequence[str]) -> int:
    """``gen-option-docs [--check] [README]``: regenerate the README's option tables (or,
    with ``--check``, exit 1 when they differ from the schemas)."""
    args = list(argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = paths[0] if paths else "README.md"
    with open(path, encoding="utf-8") as f:
        old = f.read()
    new = render_readme(old)
    if new == old:
        return 0
    if check:
        print(f"{path}: the option tables differ from the transports' schemas; "
              "run scripts/gen-option-docs")
        return 1
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    print(f"{path}: option tables regenerated")
    return 0
