"""A queue directory's layout on disk: every path under a queue, spelled once.

::

    <queue>/                    a Filespooler queue (see FORMAT.md)
      nextseq                   the next seq to process (absent in an append-only queue)
      nextseq.lock              its lock (flock; named by :func:`core.seqfile.lock_path`)
      jobs/                     job files; only names fspl-*.fspl count
      .fspl-gw/                 the gateway's own directory (fspl ignores other names)
        lock                    one sync or push at a time (the pull/push run frame)
        journal.sqlite          the journal of files moved and runs (+ -wal, -shm)
        staging/                downloads not yet linked into jobs/ (pull)
        quarantine/             files set aside, each beside a <name>.reason (pull, push)
        handoff/                jobs being handed to this worker queue (disperse)
        worker.lock             one worker process per worker queue (workers)
        running                 the job file a worker is running (workers)
        rerun.log               jobs that were running when their worker stopped
        media-seen.json         media already imported into this queue (watch)
        receipts.on             receipts are on for this queue (gateway; read by process)
        outcomes.jsonl          outcomes of jobs run here, not yet in a receipt (process)
        receipts.output         what of a job's output a ran receipt carries (process)
        receipts.sqlite         receipts to send (receiver) or received (sender)
        capabilities.json       what each remote's store really does (gateway/probe)
        outgoing/               encrypted copies of outbox jobs being pushed (trust)

Everything that reads or writes one of these names asks :class:`QueueLayout` (or, for
the two Filespooler names used everywhere, :func:`jobs_dir` and :func:`seqfile_path`).
Nothing here touches the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fspl_gateway.core.seqfile import lock_path

NEXTSEQ = "nextseq"
JOBS = "jobs"
GW_DIR = ".fspl-gw"


def seqfile_path(qdir: str) -> str:
    """``<qdir>/nextseq``."""
    return qdir + "/" + NEXTSEQ


def jobs_dir(qdir: str) -> str:
    """``<qdir>/jobs``."""
    return os.path.join(qdir, JOBS)


@dataclass(frozen=True)
class QueueLayout:
    """The paths of the queue directory ``root`` (see the module doc)."""

    root: str

    # -- Filespooler's ---------------------------------------------------------------
    @property
    def seqfile(self) -> str:
        return seqfile_path(self.root)

    @property
    def seqfile_lock(self) -> str:
        return lock_path(self.seqfile)

    @property
    def jobs(self) -> str:
        return jobs_dir(self.root)

    def job(self, name: str) -> str:
        """The path of the job file ``name`` in ``jobs/``."""
        return os.path.join(self.jobs, name)

    # -- ours: .fspl-gw/ -------------------------------------------------------------
    @property
    def gw(self) -> str:
        return os.path.join(self.root, GW_DIR)

    @property
    def run_lock(self) -> str:
        return os.path.join(self.gw, "lock")

    @property
    def journal(self) -> str:
        return os.path.join(self.gw, "journal.sqlite")

    @property
    def staging(self) -> str:
        return os.path.join(self.gw, "staging")

    @property
    def quarantine(self) -> str:
        return os.path.join(self.gw, "quarantine")

    @property
    def handoff(self) -> str:
        return os.path.join(self.gw, "handoff")

    @property
    def worker_lock(self) -> str:
        return os.path.join(self.gw, "worker.lock")

    @property
    def running(self) -> str:
        return os.path.join(self.gw, "running")

    @property
    def rerun_log(self) -> str:
        return os.path.join(self.gw, "rerun.log")

    @property
    def media_seen(self) -> str:
        return os.path.join(self.gw, "media-seen.json")

    @property
    def receipts_marker(self) -> str:
        return os.path.join(self.gw, "receipts.on")

    @property
    def outcomes(self) -> str:
        return os.path.join(self.gw, "outcomes.jsonl")

    @property
    def receipt_output(self) -> str:
        return os.path.join(self.gw, "receipts.output")

    @property
    def receipts_db(self) -> str:
        return os.path.join(self.gw, "receipts.sqlite")

    @property
    def capabilities(self) -> str:
        return os.path.join(self.gw, "capabilities.json")

    @property
    def outgoing(self) -> str:
        return os.path.join(self.gw, "outgoing")


__all__ = ["GW_DIR", "JOBS", "NEXTSEQ", "QueueLayout", "jobs_dir", "seqfile_path"]
