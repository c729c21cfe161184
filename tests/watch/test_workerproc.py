"""A workers pipeline's pool in a child process (fspl_gateway.gateway.watch.workerproc),
started from the pipeline's settings, not from a command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from fspl_gateway.core.queue import queue_init
from fspl_gateway.gateway.watch.pipelines import Pipeline
from fspl_gateway.gateway.watch.workerproc import start, workers_opts
from tests.watch.util import put_job, read, wait_for


def test_pool_from_pipeline_settings(tmp_path: Path) -> None:
    q = tmp_path / "q"
    queue_init(str(q))
    log = tmp_path / "jobs.log"
    for seq in (1, 2, 3):
        put_job(q / "jobs", seq, b"p%d" % seq)
    pipe = Pipeline(name="par", queue=str(q), workers=2, key="DB", on_error="leave",
                    command=("sh", "-c", f'echo "$FSPL_SEQ $(cat)" >> {log}'), timeout=30)
    opts = workers_opts(pipe, grace=3.0)
    assert (opts.incoming, opts.n, opts.key, opts.on_error, opts.follow, opts.grace) == (
        str(q), 2, "DB", "leave", True, 3.0)
    assert opts.workdir == f"{q}.workers" and opts.proc.command == "sh"
    assert opts.proc.timeout == 30

    proc = start(opts, "debug")
    # no command line spelled: the options travel pickled on the child's stdin
    assert proc.args == [sys.executable, "-m", "fspl_gateway.gateway.watch.workerproc"]
    try:
        wait_for(lambda: len(read(log).splitlines()) == 3, 15, "three jobs run by the pool")
        assert sorted(read(log).splitlines()) == ["1 p1", "2 p2", "3 p3"]
        assert proc.poll() is None  # following: still running
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0
