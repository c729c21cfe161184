"""Helpers for the parallel-processing tests."""

from __future__ import annotations

import os
from pathlib import Path

from fspl_gateway.core import queue as q
from fspl_gateway.core.fsutil import atomic_write
from fspl_gateway.core.packet import Meta, encode_header, make_command


def add_jobs(qdir: Path, seqs: range | list[int], *, env: dict[int, dict[bytes, bytes]] | None = None,
             cmd: dict[int, str] | None = None, ctime_base: int = 1_700_000_000) -> dict[int, str]:
    """Write jobs with the given seqs into qdir/jobs; return seq → file name."""
    out = {}
    for s in seqs:
        kind = (cmd or {}).get(s, "Command")
        if kind == "Command":
            c: object = make_command([b"%d" % s], list((env or {}).get(s, {}).items()))
        else:
            c = kind
        meta = Meta(seq=s, ctime=(ctime_base + s, 0), cmd=c)  # type: ignore[arg-type]
        name = q.new_job_filename()
        with atomic_write(str(qdir / "jobs"), name) as f:
            f.write(encode_header(meta) + b"payload %d\n" % s)
        out[s] = name
    return out


def job_names(qdir: Path | str) -> set[str]:
    return {n for n in os.listdir(os.path.join(qdir, "jobs")) if q.is_job_filename(n)}
