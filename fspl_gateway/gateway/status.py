"""``fspl-gw status``: what a queue is doing, for people (table/text), scripts (JSON) and
Prometheus (a textfile-collector metrics file).

Per queue: the next sequence number, the pending jobs, the gap that blocks a sequence
queue ("waiting for 42; have 43–57") or the files that claim one seq ("two files with
seq 42: a, b"; fspl stops there), the age of the oldest pending job (since its file
landed in ``jobs/``), the quarantined files and the last sync/push of each remote (from
the journal).

Read-only and lock-free: ``nextseq`` is read without its lock
(:func:`fspl_gateway.core.seqfile.read_unlocked`), job headers are read as ``queue-ls`` does,
the journal is opened only if it exists.  No transport (and so no SDK) is imported.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from fspl_gateway.core import queue as q
from fspl_gateway.core import seqfile
from fspl_gateway.core.errors import FsplError, PacketError, QueueError
from fspl_gateway.core.fsutil import atomic_write
from fspl_gateway.core.redact import redact
from fspl_gateway.gateway.journal import last_runs, signers
from fspl_gateway.gateway.quarantine import quarantined
from fspl_gateway.gateway.receipts import RemoteReceipts, remote_receipts


@dataclass
class RemoteStatus:
    remote: str
    direction: str
    started: float
    finished: float
    ok: bool
    summary: str


@dataclass
class SignerStatus:
    """A key that signed jobs fetched into the queue (trust): its minisign key id."""

    key_id: str
    jobs: int
    last_seq: int
    last_time: float


@dataclass
class QueueStatus:
    queue: str
    #: None for an append-only queue (no nextseq).
    next_seq: int | None = None
    pending_jobs: int = 0
    #: Sequence numbers of the pending jobs whose header could be read, ascending.
    pending_seqs: list[int] = field(default_factory=list)
    #: Job files whose header could not be read (corrupt, or encrypted without decoder).
    unreadable_jobs: int = 0
    #: A sequence queue with jobs but none with seq == next_seq.
    blocked: bool = False
    #: Human-readable: "waiting for 42; have 43–57".
    blocked_reason: str | None = None
    oldest_pending_age_seconds: float | None = None
    quarantined_files: int = 0
    quarantined: list[str] = field(default_factory=list)
    remotes: list[RemoteStatus] = field(default_factory=list)
    #: What the receipts of each remote say (an outbox that fetches receipts).
    receipts: list[RemoteReceipts] = field(default_factory=list)
    signers: list[SignerStatus] = field(default_factory=list)
    order_by: str = "sequence"
    #: Set when the queue could not be read at all.
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ranges(nums: Iterable[int]) -> str:
    """``[43, 44, 45, 50]`` → ``"43–45, 50"``."""
    out: list[str] = []
    s = sorted(set(nums))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}–{s[j]}")
        i = j + 1
    return ", ".join(out)


def _count_word(n: int) -> str:
    return {2: "two", 3: "three"}.get(n, str(n))


def _quarantined(qdir: str) -> list[str]:
    try:
        return quarantined(qdir)
    except OSError as e:
        raise QueueError(f"cannot read the quarantine of {qdir}: {e.strerror}") from None


def queue_status(qdir: str, *, decoder: str | None = None, order_by: str = "sequence",
                 now: float | None = None) -> QueueStatus:
    """The status of one queue (raises QueueError if it is not a queue directory)."""
    now = time.time() if now is None else now
    jdir = q.jobs_dir(qdir)
    if not os.path.isdir(jdir):
        raise QueueError(f"{qdir} is not a queue directory (no jobs/ in it)")
    st = QueueStatus(queue=qdir, order_by=order_by)
    st.next_seq = seqfile.read_unlocked(q.seqfile_path(qdir))
    oldest: float | None = None
    seqs: list[int] = []
    first: dict[int, str] = {}  # seq → the first file that has it
    dups: dict[int, list[str]] = {}  # seq → every file, for a seq that several files claim
    try:
        with os.scandir(jdir) as it:
            entries = [e for e in it if q.is_job_filename(e.name)]
    except OSError as e:
        raise QueueError(f"cannot read {jdir}: {e.strerror}") from None
    for ent in entries:
        try:
            mtime = ent.stat(follow_symlinks=True).st_mtime
            meta = q.read_meta(qdir, ent.name, decoder)
        except FileNotFoundError:
            continue  # processed meanwhile
        except (PacketError, OSError, FsplError):
            st.pending_jobs += 1
            st.unreadable_jobs += 1
            continue
        st.pending_jobs += 1
        seqs.append(meta.seq)
        if meta.seq in first:
            dups.setdefault(meta.seq, [first[meta.seq]]).append(ent.name)
        else:
            first[meta.seq] = ent.name
        oldest = mtime if oldest is None else min(oldest, mtime)
    st.pending_seqs = sorted(seqs)
    if oldest is not None:
        st.oldest_pending_age_seconds = round(max(0.0, now - oldest), 3)
    if (order_by == "sequence" and st.next_seq is not None and seqs
            and st.next_seq not in first):
        later = [s for s in seqs if s > st.next_seq]
        if later:
            st.blocked = True
            st.blocked_reason = f"waiting for {st.next_seq}; have {ranges(later)}"
    dup = min((s for s in dups if st.next_seq is None or s >= st.next_seq), default=None)
    if order_by == "sequence" and st.next_seq is not None and dup is not None:
        # fspl stops at a seq that two files claim (conflict copies): name them
        names = sorted(dups[dup])
        why = f"{_count_word(len(names))} files with seq {dup}: " + ", ".join(names)
        if dup == st.next_seq or not st.blocked:
            st.blocked = dup == st.next_seq
            st.blocked_reason = why if st.blocked else f"will stop at seq {dup}: {why}"
        else:
            st.blocked_reason = f"{st.blocked_reason}; then {why}"
    st.quarantined = _quarantined(qdir)
    st.quarantined_files = len(st.quarantined)
    st.remotes = [RemoteStatus(r.remote, r.direction, r.started, r.finished, r.ok, r.summary)
                  for r in last_runs(qdir)]
    st.receipts = remote_receipts(qdir, now)
    st.signers = [SignerStatus(*row) for row in signers(qdir)]
    return st


def collect(queues: Iterable[tuple[str, str | None, str]], now: float | None = None
            ) -> list[QueueStatus]:
    """Status of each ``(queue, decoder, order_by)``; a queue that cannot be read gets
    ``error`` set instead of raising."""
    out: list[QueueStatus] = []
    for qdir, decoder, order_by in queues:
        try:
            out.append(queue_status(qdir, decoder=decoder, order_by=order_by, now=now))
        except FsplError as e:
            out.append(QueueStatus(queue=qdir, order_by=order_by, error=str(e)))
    return out


# -- rendering ---------------------------------------------------------------------------
def fmt_age(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(t: float, now: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    return f"{stamp} ({fmt_age(now - t)} ago)"


def _state(st: QueueStatus) -> str:
    if st.error:
        return f"error: {st.error}"
    if st.blocked:
        return f"blocked: {st.blocked_reason}"
    if st.pending_jobs:
        return f"pending ({st.blocked_reason})" if st.blocked_reason else "pending"
    return "idle"


def render_text(statuses: list[QueueStatus], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines: list[str] = []
    for st in statuses:
        lines.append(f"queue {st.queue}")
        if st.error:
            lines.append(f"  error:       {st.error}")
            continue
        lines.append(f"  next seq:    {'-' if st.next_seq is None else st.next_seq}")
        pend = f"  pending:     {st.pending_jobs}"
        if st.pending_jobs:
            pend += f" (oldest {fmt_age(st.oldest_pending_age_seconds)})"
        if st.unreadable_jobs:
            pend += f", {st.unreadable_jobs} unreadable"
        lines.append(pend)
        lines.append(f"  state:       {_state(st)}")
        q_line = f"  quarantined: {st.quarantined_files}"
        if st.quarantined:
            q_line += " (" + ", ".join(st.quarantined[:5]) + (", …" if st.quarantined_files > 5 else "") + ")"
        lines.append(q_line)
        for r in st.remotes:
            word = "sync" if r.direction == "pull" else r.direction
            lines.append(f"  last {word} {r.remote}: {'ok' if r.ok else 'FAILED'} at "
                         f"{_when(r.finished, now)}: {_short_summary(r.summary, word, r.remote)}")
        for sg in st.signers:
            lines.append(f"  signed by {sg.key_id}: {sg.jobs} job(s), last seq {sg.last_seq} "
                         f"at {_when(sg.last_time, now)}")
        lines.extend(_receipt_lines(st.receipts))
    return redact("\n".join(lines) + ("\n" if lines else ""))


def _short_summary(summary: str, word: str, remote: str) -> str:
    """A run's summary without what the status line already says: the log-style
    ``sync:``/``push:`` prefix (also behind a log level and ``fspl_gw:``) and the
    remote (``from``/``to REMOTE``)."""
    text = " ".join(summary.split())
    text = re.sub(rf"^(?:[A-Z]+ +fspl_gw: +)?{re.escape(word)}(?: \(dry run\))?: +", "", text)
    for prep in ("from", "to"):
        text = text.replace(f" {prep} {remote}", "")
    return text


def _receipt_lines(receipts: list[RemoteReceipts]) -> list[str]:
    out: list[str] = []
    for r in receipts:
        out.append(f"  receipts {r.remote}: {r.pushed} pushed, {r.delivered} delivered, "
                   f"{r.ran} ran, {len(r.failed)} failed")
        for f in r.failed[:5]:
            out.append(f"    failed: {f.name} (seq {f.seq}, {f.status or 'failed'})")
        if r.oldest_unconfirmed:
            out.append(f"    unconfirmed: {r.unconfirmed} (oldest {r.oldest_unconfirmed}, "
                       f"{fmt_age(r.oldest_unconfirmed_age_seconds)})")
        if r.stuck:
            out.append(f"    STUCK behind {r.stuck_behind} for {fmt_age(r.stuck_seconds)}")
    return out


def render_rich(statuses: list[QueueStatus], now: float | None = None) -> None:
    """Tables on the terminal (rich is imported only here)."""
    from rich.console import Console
    from rich.table import Table

    now = time.time() if now is None else now
    console = Console()
    t = Table(title="queues")
    for col in ("queue", "next seq", "pending", "oldest", "state", "quarantined"):
        t.add_column(col)
    for st in statuses:
        state = _state(st)
        style = "red" if st.error or st.blocked else ("yellow" if st.pending_jobs else "green")
        t.add_row(st.queue, "-" if st.next_seq is None else str(st.next_seq),
                  str(st.pending_jobs), fmt_age(st.oldest_pending_age_seconds),
                  f"[{style}]{state}[/{style}]",
                  (f"[red]{st.quarantined_files}[/red]" if st.quarantined_files else "0"))
    console.print(t)
    rows = [(st.queue, r) for st in statuses for r in st.remotes]
    if rows:
        rt = Table(title="remotes (last run)")
        for col in ("queue", "direction", "remote", "result", "finished", "summary"):
            rt.add_column(col)
        for qdir, r in rows:
            rt.add_row(qdir, r.direction, r.remote, "[green]ok[/green]" if r.ok else "[red]failed[/red]",
                       _when(r.finished, now), r.summary)
        console.print(rt)


# -- Prometheus --------------------------------------------------------------------------
def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw: str) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in kw.items()) + "}"


_METRICS = [
    ("fspl_gw_queue_next_seq", "The queue's next sequence number to run."),
    ("fspl_gw_queue_pending_jobs", "Job files waiting in the queue's jobs/."),
    ("fspl_gw_queue_unreadable_jobs", "Pending job files whose header cannot be read."),
    ("fspl_gw_queue_oldest_pending_age_seconds",
     "Seconds since the oldest pending job landed in jobs/ (0 when none)."),
    ("fspl_gw_queue_quarantined_files", "Files set aside in the queue's quarantine."),
    ("fspl_gw_queue_blocked", "1 when a sequence queue waits for a missing seq."),
    ("fspl_gw_queue_up", "1 when the queue could be read."),
    ("fspl_gw_remote_last_sync_timestamp_seconds",
     "When the last sync/push of a remote into/from this queue finished (Unix time)."),
    ("fspl_gw_remote_last_sync_success", "1 when the last sync/push of a remote succeeded."),
    ("fspl_gw_receipts_pushed_jobs", "Jobs pushed to a remote (push journal)."),
    ("fspl_gw_receipts_delivered_jobs", "Pushed jobs a receipt says were delivered."),
    ("fspl_gw_receipts_ran_jobs", "Pushed jobs a receipt says ran successfully."),
    ("fspl_gw_receipts_failed_jobs", "Pushed jobs whose last run failed."),
    ("fspl_gw_receipts_failed_job_exit_code",
     "Exit status of a failed job (-1: no exit status: a signal, a timeout, a Fail packet)."),
    ("fspl_gw_receipts_unconfirmed_jobs", "Pushed jobs with no receipt that they ran."),
    ("fspl_gw_receipts_oldest_unconfirmed_age_seconds",
     "Seconds since the oldest unconfirmed job was pushed (0 when none)."),
    ("fspl_gw_receipts_stuck", "1 when the receiver's queue waits behind a failed job."),
]


def render_metrics(statuses: list[QueueStatus]) -> str:
    """Prometheus text format (one gauge family per metric)."""
    samples: dict[str, list[str]] = {name: [] for name, _ in _METRICS}
    for st in statuses:
        lq = _labels(queue=st.queue)
        samples["fspl_gw_queue_up"].append(f"fspl_gw_queue_up{lq} {0 if st.error else 1}")
        if st.error:
            continue
        if st.next_seq is not None:
            samples["fspl_gw_queue_next_seq"].append(f"fspl_gw_queue_next_seq{lq} {st.next_seq}")
        samples["fspl_gw_queue_pending_jobs"].append(
            f"fspl_gw_queue_pending_jobs{lq} {st.pending_jobs}")
        samples["fspl_gw_queue_unreadable_jobs"].append(
            f"fspl_gw_queue_unreadable_jobs{lq} {st.unreadable_jobs}")
        samples["fspl_gw_queue_oldest_pending_age_seconds"].append(
            f"fspl_gw_queue_oldest_pending_age_seconds{lq} {st.oldest_pending_age_seconds or 0}")
        samples["fspl_gw_queue_quarantined_files"].append(
            f"fspl_gw_queue_quarantined_files{lq} {st.quarantined_files}")
        samples["fspl_gw_queue_blocked"].append(f"fspl_gw_queue_blocked{lq} {int(st.blocked)}")
        for r in st.remotes:
            lr = _labels(queue=st.queue, remote=r.remote, direction=r.direction)
            samples["fspl_gw_remote_last_sync_timestamp_seconds"].append(
                f"fspl_gw_remote_last_sync_timestamp_seconds{lr} {r.finished:.3f}")
            samples["fspl_gw_remote_last_sync_success"].append(
                f"fspl_gw_remote_last_sync_success{lr} {int(r.ok)}")
        for rc in st.receipts:
            lr = _labels(queue=st.queue, remote=rc.remote)
            for metric, value in (("pushed_jobs", rc.pushed), ("delivered_jobs", rc.delivered),
                                  ("ran_jobs", rc.ran), ("failed_jobs", len(rc.failed)),
                                  ("unconfirmed_jobs", rc.unconfirmed),
                                  ("oldest_unconfirmed_age_seconds",
                                   rc.oldest_unconfirmed_age_seconds or 0),
                                  ("stuck", int(rc.stuck))):
                samples[f"fspl_gw_receipts_{metric}"].append(
                    f"fspl_gw_receipts_{metric}{lr} {value}")
            for f in rc.failed:
                lj = _labels(queue=st.queue, remote=rc.remote, job=f.name, seq=str(f.seq))
                samples["fspl_gw_receipts_failed_job_exit_code"].append(
                    f"fspl_gw_receipts_failed_job_exit_code{lj} "
                    f"{-1 if f.exit is None else f.exit}")
    out: list[str] = []
    for name, help_ in _METRICS:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.extend(samples[name])
    return "\n".join(out) + "\n"


def write_metrics(path: str, statuses: list[QueueStatus]) -> None:
    """Write the metrics file atomically (a textfile collector never sees half of it)."""
    d, name = os.path.split(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        with atomic_write(d, name, clobber=True) as f:
            f.write(render_metrics(statuses).encode())
    except OSError as e:
        raise QueueError(f"cannot write the metrics file {path}: {e.strerror}") from None
