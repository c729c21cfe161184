"""Many hosts, one remote queue: jobs claimed by leases made of conditional writes.

Every host lists the remote ``jobs/``, picks a job nobody holds, and claims it by
*creating* a claim file next to it with the transport's no-clobber write
(``If-None-Match: *`` on S3, rename-without-overwrite on SFTP, ``mode=add`` on Dropbox,
link on a local directory): only one host can create a given name.

Claims are numbered generations: ``<job>.claim.<g>``, holding JSON
``{"host": …, "expires": <unix time>, "gen": g}``.  The holder of the highest generation
owns the job while ``expires`` is in the future.

* claim a free job: create generation 0;
* renew (every lease/3 while the command runs): create generation g+1 — if that name
  already exists, another host took the job over after our lease expired: we lost it and
  kill our command;
* take over a dead host's job: its highest generation has expired (by more than the
  allowed clock skew) → create the next generation;
* finish: delete the job, then its claims.  Under ``--on-error retry`` a failed job's
  claims are deleted (released) and this host stops with an error.

Every remote call (listing, claims, fetching, deleting) goes through the one retry policy
(:mod:`fspl_gateway.gateway.retry`, :attr:`HostOpts.retry`): a transient error is retried
with backoff instead of ending the host.  A claim whose write failed in a way that may
have reached the store, and then exists, is read back: our own bytes make it ours.

Claim names do not match ``fspl-*.fspl``, so fspl, ``sync`` and queue scans ignore them.
While leases are valid no two hosts run the same job; a host that stalls past its lease
may find its job taken over, and then stops running it.  The command of a killed host dies
with it (:func:`~fspl_gateway.core.process.die_with_parent`), so a job taken over is not
still running there.

Claims are only safe where the transport's no-clobber write is atomic
(``Capabilities.atomic_noclobber``): a transport without it (S3 with
``-o conditional_writes=false``: a racy check, then a put) is refused with a ConfigError
(exit 2) before anything is claimed; so is one whose store overwrote in the capability
probe (:mod:`fspl_gateway.gateway.probe`: ``rclone serve sftp``, s3rver).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fspl_gateway.core.errors import (
    ConfigError,
    FsplError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransportError,
)
from fspl_gateway.core.hashing import hash_fd
from fspl_gateway.core.layout import QueueLayout
from fspl_gateway.core.log import log
from fspl_gateway.core.outcomes import OutputCapture, OutputMode
from fspl_gateway.core.packet import Meta, read_header_fd
from fspl_gateway.core.process import JobResult, ProcessOpts, run_job
from fspl_gateway.gateway import receipts as rcpt
from fspl_gateway.gateway.probe import verify_capabilities
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.transports.base import Transport, is_job_name

CLAIM = ".claim."

T = TypeVar("T")


def claim_name(job: str, gen: int) -> str:
    return f"{job}{CLAIM}{gen}"


def parse_claim(name: str) -> tuple[str, int] | None:
    job, sep, gen = name.rpartition(CLAIM)
    if not sep or not gen.isdigit() or not is_job_name(job):
        return None
    return job, int(gen)


@dataclass
class HostOpts:
    proc: ProcessOpts
    workdir: str
    host_id: str = ""
    lease: float = 60.0
    skew: float = 5.0
    on_error: str = "retry"
    follow: bool = False
    poll: float = 2.0
    max_jobs: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Write a *ran* receipt for each job into the remote's receipts/ (before the job
    #: is deleted there); the queue id defaults to the host and the work directory.
    receipts: rcpt.SendOptions | None = None

    def __post_init__(self) -> None:
        if not self.host_id:
            self.host_id = f"{socket.gethostname()}-{os.getpid()}"
        if self.on_error not in ("retry", "delete"):
            raise FsplError("with a remote queue, --on-error must be retry or delete")


class LostLease(Exception):
    pass


def require_atomic_noclobber(transport: Transport) -> None:
    """ConfigError unless ``transport`` creates a name atomically without overwriting:
    two hosts could otherwise both win one claim and run one job twice."""
    if not transport.capabilities.atomic_noclobber:
        raise ConfigError(f"{transport.describe()} cannot create a file without overwriting "
                          "atomically (e.g. S3 with conditional_writes=false, or a store "
                          "that overwrote in the probe: see `fspl-gw remote check`), so "
                          "claims could race; multi-host workers need a store that can")


class Host:
    """One claiming worker on a shared remote queue (thread-safe per instance)."""

    def __init__(self, transport: Transport, opts: HostOpts) -> None:
        require_atomic_noclobber(transport)
        self.t = transport
        self.o = opts
        self.done = 0
        self.stop = threading.Event()

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return self.o.retry.call(fn, what, self.stop)

    def _delete(self, name: str) -> None:
        """Delete ``name`` (retried); missing is fine (also after an attempt whose answer
        was lost)."""
        try:
            self._retry(lambda: self.t.delete(name), f"deleting {name}")
        except RemoteNotFoundError:
            pass

    # -- claims ----------------------------------------------------------------------
    def _write_claim(self, job: str, gen: int) -> None:
        """Create claim generation ``gen`` of ``job``; RemoteExistsError if another host
        has it."""
        name = claim_name(job, gen)
        body = json.dumps({"host": self.o.host_id, "gen": gen,
                           "expires": time.time() + self.o.lease}).encode()
        attempts = 0

        def write() -> None:
            nonlocal attempts
            attempts += 1
            self.t.write_new(name, io.BytesIO(body), len(body))

        try:
            self._retry(write, f"writing claim {name}")
        except RemoteExistsError:
            if attempts > 1 and self._read(name) == body:
                return  # an earlier attempt of ours created it
            raise

    def _read(self, name: str) -> bytes | None:
        """The first 4 KiB of ``name`` (retried), or None if it does not exist."""
        def read() -> bytes:
            with self.t.open(name) as f:
                return bytes(f.read(4096))
        try:
            return self._retry(read, f"reading claim {name}")
        except RemoteNotFoundError:
            return None

    def _claim_state(self, job: str, gen: int) -> dict[str, object] | None:
        try:
            data = self._read(claim_name(job, gen))
            return None if data is None else json.loads(data)
        except (ValueError, TransportError) as e:
            log.warning("unreadable claim %s: %s", claim_name(job, gen), e)
            return None

    def _try_claim(self, job: str, top: int | None) -> int | None:
        """Claim ``job`` (``top``: its highest claim generation, None if unclaimed)."""
        if top is not None:
            st = self._claim_state(job, top)
            if st is None:
                return None  # vanished (finished) or unreadable: look again next round
            expires = float(st.get("expires", 0))  # type: ignore[arg-type]
            if time.time() < expires + self.o.skew:
                return None
            log.warning("job %s: lease of %s expired; taking it over", job, st.get("host"))
        gen = 0 if top is None else top + 1
        try:
            self._write_claim(job, gen)
        except RemoteExistsError:
            return None
        return gen

    def _delete_claims(self, job: str, upto: int) -> None:
        for g in range(upto + 1):
            try:
                self._delete(claim_name(job, g))
            except TransportError as e:
                log.warning("could not delete claim %s: %s", claim_name(job, g), e)

    # -- one round ------------------------------------------------------------------
    def scan(self) -> tuple[list[str], dict[str, int]]:
        jobs: list[tuple[float, str]] = []
        top: dict[str, int] = {}
        listing = self._retry(lambda: list(self.t.list()), f"listing {self.t.describe()}")
        for e in listing:
            c = parse_claim(e.name)
            if c is not None:
                top[c[0]] = max(top.get(c[0], -1), c[1])
            elif is_job_name(e.name):
                jobs.append((e.mtime or 0.0, e.name))
        jobs.sort()
        return [n for _, n in jobs], top

    def round(self) -> bool:
        """Claim and run one job; return False when nothing could be claimed."""
        jobs, top = self.scan()
        for job in jobs:
            if self.stop.is_set():
                return False
            gen = self._try_claim(job, top.get(job))
            if gen is not None:
                self._run(job, gen)
                return True
        # claims whose job is gone and whose lease ran out: clean them up
        for job, g in top.items():
            if job not in jobs:
                st = self._claim_state(job, g)
                if st is None or time.time() > float(st.get("expires", 0)) + self.o.skew:  # type: ignore[arg-type]
                    self._delete_claims(job, g)
        return False

    def _run(self, job: str, gen: int) -> None:
        os.makedirs(self.o.workdir, exist_ok=True)
        state = {"gen": gen, "lost": False}
        proc_box: list[subprocess.Popen[bytes]] = []
        renew_stop = threading.Event()

        def renew() -> None:
            while not renew_stop.wait(self.o.lease / 3):
                try:
                    self._write_claim(job, state["gen"] + 1)
                except RemoteExistsError:
                    log.error("job %s: lease lost to another host; stopping it here", job)
                    state["lost"] = True
                    for p in proc_box:
                        p.kill()
                    return
                except TransportError as e:
                    log.warning("job %s: lease renewal failed (%s); retrying", job, e)
                    continue
                old = state["gen"]
                state["gen"] = old + 1
                try:
                    self._delete(claim_name(job, old))
                except TransportError:
                    pass

        with tempfile.TemporaryFile(dir=self.o.workdir) as f:

            def fetch() -> int:
                f.seek(0)
                f.truncate()
                return self.t.fetch(job, f)

            try:
                self._retry(fetch, f"fetching {job}")
            except RemoteNotFoundError:
                self._delete_claims(job, gen)
                return
            f.flush()
            f.seek(0)
            meta, _ = read_header_fd(f.fileno())
            sha = hash_fd(f.fileno())[1][0] if self.o.receipts is not None else ""
            th = threading.Thread(target=renew, daemon=True)
            th.start()
            start = time.time()
            so = self.o.receipts
            cap = None if so is None or so.output in (None, OutputMode.NONE) \
                else OutputCapture(so.output)
            try:
                res = self._execute(meta, f.fileno(), job, proc_box, cap)
            finally:
                renew_stop.set()
                th.join()
        g = int(state["gen"])
        if state["lost"]:
            return
        if self.o.receipts is not None:
            self._receipt(job, meta, sha, start, res, cap)
        if res.success or self.o.on_error == "delete":
            self._delete(job)
            self._delete_claims(job, g)
            self.done += 1
            log.info("job %d (%s) done on %s", meta.seq, job, self.o.host_id)
        else:
            self._delete_claims(job, g)
            raise FsplError(f"job {meta.seq} ({job}) failed: {res.status}; released for a "
                            "retry (--on-error retry)")

    def _receipt(self, job: str, meta: Meta, sha: str, start: float,
                 res: JobResult, cap: OutputCapture | None = None) -> None:
        """Write the job's *ran* receipt (retried); a failure is logged, never fatal."""
        so = self.o.receipts
        assert so is not None
        end = time.time()
        out = cap.fields().get("output") if cap is not None else None
        r = rcpt.Receipt(rcpt.Kind.RAN, job, meta.seq, sha, round(end, 3), round(start, 3),
                         round(end, 3), res.success, res.exit_code, res.status[:200],
                         None if out is None else rcpt.Output.parse(out))
        qid = so.queue_id or rcpt.default_queue_id(self.o.workdir)
        try:
            self._retry(lambda: rcpt.write_batch(self.t, [r], qid, so.sign_key),
                        f"writing the receipt of {job}")
        except FsplError as e:
            log.error("job %s: could not write its receipt: %s", job, e)

    def _execute(self, meta: Meta, fd: int, job: str, box: list[subprocess.Popen[bytes]],
                 cap: OutputCapture | None = None) -> JobResult:
        """Run the job with the one executor (:func:`~fspl_gateway.core.process.run_job`):
        its environment checks, ``FSPL_GW_HOST_ID`` added, the command killed if this
        process dies; ``box`` receives the process (the lease renewal kills it when the
        lease is lost)."""
        return run_job(self.o.proc, meta, fd, filename=job,
                       extra_env={b"FSPL_GW_HOST_ID": os.fsencode(self.o.host_id)},
                       kill_on_parent_death=True, on_start=box.append, output=cap)


def run_hosts(transport: Transport, opts: HostOpts, n: int) -> int:
    """Run ``n`` claiming workers in this process until the queue has nothing claimable
    (or forever with ``follow``); return the number of jobs done.  ConfigError for a
    transport without atomic no-clobber writes, declared or found by the probe."""
    verify_capabilities(transport, QueueLayout(opts.workdir))
    require_atomic_noclobber(transport)
    hosts = [Host(transport, HostOpts(**{**opts.__dict__, "host_id": f"{opts.host_id}/{i + 1}"}))
             for i in range(n)]
    errors: list[BaseException] = []

    def loop(h: Host) -> None:
        try:
            while not h.stop.is_set():
                if opts.max_jobs is not None and sum(x.done for x in hosts) >= opts.max_jobs:
                    return
                if not h.round():
                    if not opts.follow:
                        return
                    h.stop.wait(opts.poll)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(h,)) for h in hosts]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.2)
    except KeyboardInterrupt:
        for h in hosts:
            h.stop.set()
        for th in threads:
            th.join()
    if errors:
        e = errors[0]
        raise e if isinstance(e, FsplError) else FsplError(str(e))
    return sum(h.done for h in hosts)
