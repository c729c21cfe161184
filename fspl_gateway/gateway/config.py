"""The configuration file: named remotes, so that cron lines stay short.

Where: ``--config FILE``, else ``$FSPL_GW_CONFIG``, else ``~/.config/fspl-gw/config.toml``
(the default file may be missing; an explicitly named one must exist).  Format (TOML)::

    [remotes.backups]
    transport = "s3"                # required
    location = "my-bucket/queue"    # required
    endpoint_url = "https://…"      # any other key is a transport option
    secret_access_key = "…"
    receipts = true                 # receipt settings: not passed to the transport
    queue_id = "site-b"             # a trust setting, also the queue id receipts name

Trust settings (:mod:`fspl_gateway.gateway.trust`) live in the same table and are not
transport options: ``trusted_keys`` (list), ``queue_id``, ``identity`` (list),
``signature_wait``, ``sign_key``, ``encrypt_to`` (list) and a ``[remotes.NAME.routes]``
table (key → queue directory); :attr:`RemoteSpec.trust` holds them.

``--remote NAME`` picks a configured remote; anything that is not a configured name is a
literal location, and then ``--transport`` is required.  ``-o key=value`` (repeatable)
overrides the file's options (values stay strings; the transport parses them through its
option schema, :mod:`fspl_gateway.transports.options`).  :func:`redacted` masks, for logs
and status, every option the transport's schema marks secret, and every key the schema
does not know (or of a transport without a schema) that mentions
secret/token/password/key/passphrase; secrets are never printed.
"""

from __future__ import annotations

import functools
import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.log import log
from fspl_gateway.gateway.receipt_settings import KEYS as SETTING_KEYS
from fspl_gateway.transports.options import OptionSchema

ENV_VAR = "FSPL_GW_CONFIG"
#: Keys of a remote's table that are trust settings (gateway.trust.CONFIG_KEYS).
TRUST_KEYS = frozenset({"trusted_keys", "queue_id", "routes", "identity", "signature_wait",
                        "sign_key", "encrypt_to"})
SECRET_WORDS = ("secret", "token", "password", "key", "passphrase")
MASK = "***"


def default_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "fspl-gw", "config.toml")


def config_path(explicit: str | None = None) -> tuple[str, bool]:
    """The config file to read and whether it was named explicitly (flag or env)."""
    if explicit:
        return explicit, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return default_path(), False


@functools.cache
def _schema(transport: str) -> OptionSchema | None:
    """The option schema of ``transport`` (None: unknown transport or none declared)."""
    from fspl_gateway.transports.base import load

    try:
        return load(transport).options_schema
    except ConfigError:
        return None


def is_secret_key(key: str, transport: str | None = None) -> bool:
    """True if option ``key`` holds a secret: the transport's schema says so, or, for a
    key it does not declare, the key's name mentions one of :data:`SECRET_WORDS`."""
    schema = _schema(transport) if transport else None
    known = schema.is_secret(key) if schema is not None else None
    if known is not None:
        return known
    k = key.lower()
    return any(w in k for w in SECRET_WORDS)


def redacted(options: Mapping[str, Any], transport: str | None = None) -> dict[str, Any]:
    """A copy of ``options`` with every secret value masked (see :func:`is_secret_key`)."""
    return {k: (MASK if is_secret_key(k, transport) and v not in (None, "") else v)
            for k, v in options.items()}


@dataclass(frozen=True)
class RemoteSpec:
    """A resolved remote: which transport, where, with which options."""

    transport: str
    location: str
    options: dict[str, Any] = field(default_factory=dict)
    #: The configured name, or None for a literal location.
    name: str | None = None
    #: Gateway settings of this remote, not for the transport (unparsed; see
    #: :mod:`fspl_gateway.gateway.receipt_settings`).
    settings: dict[str, Any] = field(default_factory=dict)
    #: The trust settings of the remote's table (see the module doc).
    trust: dict[str, Any] = field(default_factory=dict)

    def redacted(self) -> dict[str, Any]:
        return redacted(self.options, self.transport)

    def __repr__(self) -> str:  # never show secrets, even in a traceback or debug log
        return (f"RemoteSpec(name={self.name!r}, transport={self.transport!r}, "
                f"location={self.location!r}, options={self.redacted()!r})")

    __str__ = __repr__


@dataclass(frozen=True)
class Config:
    path: str | None = None
    remotes: dict[str, dict[str, Any]] = field(default_factory=dict)


#: A config file is a few KiB; reading stops past this (a device or a wrong file).
MAX_CONFIG_BYTES = 4 << 20


def read_toml(path: str) -> tuple[dict[str, Any], int]:
    """The parsed TOML of config file ``path`` and its st_mode.  Anything wrong with it
    (unreadable, too big, not UTF-8, not TOML) is a one-line ConfigError; only a missing
    file raises FileNotFoundError, for the caller to judge."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8-sig")  # a leading BOM (some editors write one) is fine
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} "
                          f"on line {line}); save it as UTF-8") from None
    try:
        return tomllib.loads(text), mode
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: nested too deeply") from None


def load(explicit: str | None = None) -> Config:
    """Read the config file (see the module doc for where).  A missing default file is an
    empty config; a missing explicit file, bad TOML or a bad remote table is ConfigError."""
    path, named = config_path(explicit)
    try:
        data, mode = read_toml(path)
    except FileNotFoundError:
        if named:
            raise ConfigError(f"config file {path} does not exist") from None
        return Config(None, {})
    remotes = data.get("remotes", {})
    if not isinstance(remotes, dict):
        raise ConfigError(f"config file {path}: [remotes] must be a table")
    out: dict[str, dict[str, Any]] = {}
    has_secret = False
    for name, table in remotes.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: remotes.{name} must be a table")
        for k, v in table.items():
            if k in TRUST_KEYS:
                continue
            if isinstance(v, dict) or (isinstance(v, list) and (
                    k not in SETTING_KEYS or not all(isinstance(x, str) for x in v))):
                raise ConfigError(f"config file {path}: remotes.{name}.{k} must be a "
                                  "string, number or boolean")
            has_secret = has_secret or is_secret_key(k)
        out[name] = dict(table)
    if has_secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("config file %s holds credentials but is readable by others "
                    "(chmod 600 it)", path)
    return Config(path, out)


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """``["key=value", …]`` → dict; a pair without ``=`` or with an empty key is
    ConfigError."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad option {p.split('=')[0]!r}: use -o key=value")
        out[key] = value
    return out


def resolve_remote(remote: str | None, transport: str | None = None,
                   overrides: Iterable[str] = (), config: Config | None = None,
                   config_file: str | None = None) -> RemoteSpec:
    """Turn ``--remote``/``--transport``/``-o`` (and the config file) into a RemoteSpec."""
    if not remote:
        raise ConfigError("no remote given: use --remote NAME (from the config file) or "
                          "--remote LOCATION --transport NAME")
    cfg = config if config is not None else load(config_file)
    opts = parse_overrides(overrides)
    table = cfg.remotes.get(remote)
    if table is not None:
        t = transport or table.get("transport")
        if not t or not isinstance(t, str):
            raise ConfigError(f"remote {remote!r} in {cfg.path} has no transport")
        loc = table.get("location")
        if loc is None or not isinstance(loc, str | int):
            raise ConfigError(f"remote {remote!r} in {cfg.path} has no location")
        options = {k: v for k, v in table.items()
                   if k not in ("transport", "location") and k not in TRUST_KEYS}
        options.update(opts)
        options, settings = _split(options)
        trust = {k: v for k, v in table.items() if k in TRUST_KEYS}
        return RemoteSpec(t, str(loc), options, remote, settings, trust)
    if not transport:
        known = ", ".join(sorted(cfg.remotes)) or "none"
        where = cfg.path or default_path()
        raise ConfigError(f"unknown remote {remote!r} (configured in {where}: {known}); "
                          "for a literal location give --transport")
    options, settings = _split(opts)
    return RemoteSpec(transport, remote, options, None, settings)


def _split(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(transport options, gateway settings) of a remote's keys."""
    return ({k: v for k, v in options.items() if k not in SETTING_KEYS},
            {k: v for k, v in options.items() if k in SETTING_KEYS})
