"""Pipelines and the ``[watch]`` table of the config file, for ``fspl-gw watch`` and
``fspl-gw status --config``.

The same TOML file as :mod:`fspl_gateway.gateway.config` (its ``[remotes.NAME]`` tables are read
by that module); this module reads two more tables::

    [watch]
    media_root = "/media"              # optional: import export media mounted here
    media_queue = "/var/spool/site-b"  # …into this queue (or media_pipeline = "NAME")
    media_interval = 5                 # seconds between scans of media_root (default 5)
    grace = 30                         # SIGTERM: seconds to finish the running job/transfer
    metrics_file = "/var/lib/prometheus/node-exporter/fspl_gw.prom"   # optional
    metrics_interval = 15              # seconds between metrics-file updates (default 15)
    rescan = 30                        # seconds between safety rescans of local queues

    [pipelines.site-b]
    remote = "site-b"                  # a [remotes.X] name; omit for a local-only queue
    queue = "/var/spool/site-b"        # the local queue (an outbox for direction = "push")
    direction = "pull"                 # "pull" (default) or "push"
    interval = 60                      # seconds between polls of the remote (default 60)
    after = "delete"                   # pull: after_fetch; push: after_push (default delete;
                                       # keep-until-ran|-delivered: receipts fetched each
                                       # round, confirmed jobs pruned)
    decoder = "gpg -q -d"              # optional, as --decoder
    concurrency = 4                    # default: the transport's (16 on S3, else 4)
    retries = 5
    # run the queue's jobs (pull pipelines and local-only queues):
    process = ["my-handler", "--flag"] # command and fixed arguments
    on_error = "retry"                 # delete | leave | retry
    order_by = "sequence"              # sequence | timestamp
    allow_job_params = false
    ignore_payload = false
    timeout = 3600                     # seconds, per job
    never_delete = false
    output_to = "passboth"             # passboth | saveboth
    # …or with N parallel workers (fspl-gw workers --follow) instead of process:
    # workers = 4
    # command = ["my-handler"]
    # key = "DB"                       # optional, as workers --key

Everything here is validated up front: a bad value is a :class:`ConfigError` naming the
file, the table and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from fspl_gateway.core.errors import ConfigError
from fspl_gateway.core.process import OnError, OrderBy, OutputTo
from fspl_gateway.gateway import config as cfgmod
from fspl_gateway.gateway.journal import Direction
from fspl_gateway.gateway.pull import AfterFetch
from fspl_gateway.gateway.push import AfterPush

E = TypeVar("E", bound=StrEnum)

_PIPELINE_KEYS = {
    "remote", "queue", "direction", "interval", "after", "decoder", "concurrency", "retries",
    "process", "on_error", "order_by", "allow_job_params", "ignore_payload", "timeout",
    "never_delete", "output_to", "workers", "command", "key",
}
_WATCH_KEYS = {"media_root", "media_queue", "media_pipeline", "media_interval", "grace",
               "metrics_file", "metrics_interval", "rescan"}


@dataclass(frozen=True)
class Pipeline:
    name: str
    queue: str
    remote: str | None = None
    direction: Direction = Direction.PULL
    interval: float = 60.0
    #: AfterFetch for a pull pipeline, AfterPush for a push pipeline.
    after: AfterFetch | AfterPush = AfterFetch.DELETE
    decoder: str | None = None
    #: None: the transport's default.
    concurrency: int | None = None
    retries: int = 5
    #: queue-process: command and its fixed arguments (empty: do not process).
    process: tuple[str, ...] = ()
    on_error: OnError = OnError.RETRY
    order_by: OrderBy = OrderBy.SEQUENCE
    allow_job_params: bool = False
    ignore_payload: bool = False
    timeout: float | None = None
    never_delete: bool = False
    output_to: OutputTo = OutputTo.PASSBOTH
    #: fspl-gw workers: N (0: not used) and the command.
    workers: int = 0
    command: tuple[str, ...] = ()
    key: str | None = None


@dataclass(frozen=True)
class WatchSettings:
    media_root: str | None = None
    media_queue: str | None = None
    media_interval: float = 5.0
    grace: float = 30.0
    metrics_file: str | None = None
    metrics_interval: float = 15.0
    rescan: float = 30.0


@dataclass(frozen=True)
class WatchConfig:
    path: str | None
    remotes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    watch: WatchSettings = field(default_factory=WatchSettings)

    def queues(self) -> list[str]:
        """Every distinct queue the config names (pipelines, then the media queue)."""
        out: list[str] = []
        for p in self.pipelines.values():
            if p.queue not in out:
                out.append(p.queue)
        mq = self.watch.media_queue
        if mq and mq not in out:
            out.append(mq)
        return out


class _Table:
    """Typed access to one TOML table, with errors naming file, table and key."""

    def __init__(self, path: str, where: str, data: Mapping[str, Any]) -> None:
        self.path, self.where, self.data = path, where, data

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"config file {self.path}: {self.where}.{key} {msg}")

    def str_(self, key: str, default: str | None = None) -> str | None:
        v = self.data.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise self.err(key, "must be a non-empty string")
        return v

    def enum_(self, key: str, default: E, choices: tuple[E, ...] = ()) -> E:
        """One of ``default``'s enum values (case-insensitive), or one of ``choices``."""
        v = self.str_(key)
        if v is None:
            return default
        allowed = choices or tuple(type(default))
        for member in allowed:
            if member == v.lower():
                return member
        raise self.err(key, f"must be one of {', '.join(allowed)} (not {v.lower()!r})")

    def num(self, key: str, default: float | None, *, minimum: float = 0.0,
            integer: bool = False) -> float | None:
        v = self.data.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or (
                integer and not isinstance(v, int)):
            raise self.err(key, f"must be {'an integer' if integer else 'a number'}")
        if v < minimum:
            raise self.err(key, f"must be at least {minimum:g}")
        return v

    def bool_(self, key: str, default: bool = False) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise self.err(key, "must be true or false")
        return v

    def argv(self, key: str) -> tuple[str, ...]:
        v = self.data.get(key)
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if (not isinstance(v, list) or not v
                or not all(isinstance(x, str) for x in v) or not v[0]):
            raise self.err(key, 'must be a command as a list of strings, e.g. ["cmd", "arg"]')
        return tuple(v)


def _int_or_none(v: float | None) -> int | None:
    return None if v is None else int(v)


def _path(p: str, base: str) -> str:
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))


def _pipeline(path: str, name: str, data: Any, remotes: Mapping[str, Any]) -> Pipeline:
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: pipelines.{name} must be a table")
    t = _Table(path, f"pipelines.{name}", data)
    unknown = sorted(set(data) - _PIPELINE_KEYS)
    if unknown:
        raise t.err(unknown[0], f"is not a pipeline setting (known: {', '.join(sorted(_PIPELINE_KEYS))})")
    queue = t.str_("queue")
    if queue is None:
        raise t.err("queue", "is required (the local queue directory)")
    remote = t.str_("remote")
    if remote is not None and remote not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise t.err("remote", f"names {remote!r}, which is not a [remotes.X] table (known: {known})")
    direction = t.enum_("direction", Direction.PULL)
    process = t.argv("process")
    workers = int(t.num("workers", 0, integer=True) or 0)
    command = t.argv("command")
    if workers and process:
        raise t.err("workers", "and process exclude each other (workers runs command)")
    if workers and not command:
        raise t.err("command", "is required with workers")
    if command and not workers:
        raise t.err("command", "is used with workers = N (for one at a time, use process)")
    if direction == Direction.PUSH:
        if remote is None:
            raise t.err("remote", "is required for a push pipeline")
        if process or workers:
            raise t.err("direction", '"push" sends an outbox: it cannot process or run workers')
    if remote is None and not process and not workers:
        raise t.err("remote", "or process (or workers) is required: the pipeline does nothing")
    base = os.path.dirname(os.path.abspath(path))
    timeout = t.num("timeout", None, minimum=0)
    return Pipeline(
        name=name, queue=_path(queue, base), remote=remote, direction=direction,
        interval=float(t.num("interval", 60.0, minimum=0.05) or 60.0),
        after=t.enum_("after", AfterPush.DELETE if direction == Direction.PUSH
                      else AfterFetch.DELETE),
        decoder=t.str_("decoder"),
        concurrency=_int_or_none(t.num("concurrency", None, minimum=1, integer=True)),
        retries=int(t.num("retries", 5, minimum=1, integer=True) or 5),
        process=process,
        on_error=t.enum_("on_error", OnError.RETRY),
        order_by=t.enum_("order_by", OrderBy.SEQUENCE, (OrderBy.SEQUENCE, OrderBy.TIMESTAMP)),
        allow_job_params=t.bool_("allow_job_params"),
        ignore_payload=t.bool_("ignore_payload"),
        timeout=float(timeout) if timeout is not None else None,
        never_delete=t.bool_("never_delete"),
        output_to=t.enum_("output_to", OutputTo.PASSBOTH),
        workers=workers, command=command, key=t.str_("key"))


def _watch(path: str, data: Any, pipelines: Mapping[str, Pipeline]) -> WatchSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: [watch] must be a table")
    t = _Table(path, "watch", data)
    unknown = sorted(set(data) - _WATCH_KEYS)
    if unknown:
        raise t.err(unknown[0], f"is not a watch setting (known: {', '.join(sorted(_WATCH_KEYS))})")
    base = os.path.dirname(os.path.abspath(path))
    root = t.str_("media_root")
    mqueue = t.str_("media_queue")
    mpipe = t.str_("media_pipeline")
    if mpipe is not None:
        if mqueue is not None:
            raise t.err("media_pipeline", "and media_queue exclude each other")
        if mpipe not in pipelines:
            raise t.err("media_pipeline", f"names {mpipe!r}, which is not a [pipelines.X] table")
        mqueue = pipelines[mpipe].queue
    elif mqueue is not None:
        mqueue = _path(mqueue, base)
    if root is not None and mqueue is None:
        raise t.err("media_queue", "(or media_pipeline) is required with media_root")
    metrics = t.str_("metrics_file")
    return WatchSettings(
        media_root=_path(root, base) if root else None, media_queue=mqueue,
        media_interval=float(t.num("media_interval", 5.0, minimum=0.05) or 5.0),
        grace=float(t.num("grace", 30.0) or 0.0),
        metrics_file=_path(metrics, base) if metrics else None,
        metrics_interval=float(t.num("metrics_interval", 15.0, minimum=0.1) or 15.0),
        rescan=float(t.num("rescan", 30.0, minimum=0.1) or 30.0))


def load(explicit: str | None = None) -> WatchConfig:
    """Read remotes, pipelines and ``[watch]`` from the config file (see
    :func:`fspl_gateway.gateway.config.config_path` for where).  A missing default file is an
    empty config."""
    base = cfgmod.load(explicit)  # remotes (and the file's errors, permission warning)
    if base.path is None:
        return WatchConfig(None)
    path = base.path
    try:
        data, _ = cfgmod.read_toml(path)  # again: changed since cfgmod read it?
    except FileNotFoundError:
        raise ConfigError(f"config file {path} disappeared while it was read") from None
    raw = data.get("pipelines", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: [pipelines] must be a table")
    pipes = {name: _pipeline(path, name, table, base.remotes) for name, table in raw.items()}
    seen: dict[tuple[str, str], str] = {}
    for p in pipes.values():
        if p.remote is None:
            continue
        k = (p.queue, p.direction)
        if k in seen and p.direction == Direction.PUSH:
            raise ConfigError(f"config file {path}: pipelines {seen[k]} and {p.name} push the "
                              f"same outbox {p.queue}")
        seen.setdefault(k, p.name)
    watch = _watch(path, data.get("watch", {}), pipes)
    return WatchConfig(path, base.remotes, pipes, watch)


def status_targets(cfg: WatchConfig) -> list[tuple[str, str | None, str]]:
    """(queue, decoder, order_by) of every queue in the config, for status."""
    out: dict[str, tuple[str, str | None, str]] = {}
    for p in cfg.pipelines.values():
        cur = out.get(p.queue)
        if cur is None or (p.process or p.workers):
            out[p.queue] = (p.queue, p.decoder or (cur[1] if cur else None),
                            p.order_by if (p.process or p.workers) else (cur[2] if cur else OrderBy.SEQUENCE))
    if cfg.watch.media_queue and cfg.watch.media_queue not in out:
        out[cfg.watch.media_queue] = (cfg.watch.media_queue, None, OrderBy.SEQUENCE)
    return list(out.values())


def remote_spec(cfg: WatchConfig, name: str) -> cfgmod.RemoteSpec:
    """The RemoteSpec of a configured remote."""
    return cfgmod.resolve_remote(name, config=cfgmod.Config(cfg.path, cfg.remotes))
