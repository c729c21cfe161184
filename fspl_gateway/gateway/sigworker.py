"""The signature worker: a forked child process that reads and checks the signatures of a
one-thread pull run ahead of its fetch, and deletes signature files behind it.

Why a process: a sync from a local directory (or a USB stick) runs in one thread — more
threads only contend for one disk — and with trust every job adds work of its own: read
and parse its ``.minisig``, verify an Ed25519 signature (~180 µs here), and later delete
the ``.minisig`` (an unlink that frees a file: ~200 µs on this ext4).  In a thread, that
work contends with the fetch for the GIL, and the hand-offs cost about what they save
(measured: ``docs/benchmarks.md``, Trust).  A forked child shares nothing with the parent
at run time; it runs the gate's own code (:meth:`ReceiveGate._check
<fspl_gateway.gateway.trust.ReceiveGate._check>` and the transport's ``delete_many``) on
the second core, and the parent only exchanges a few bytes per job over two pipes
(msgpack frames).

Safety: the child is forked only when the parent runs a single thread (a fork copies no
other thread, so no lock can be left held — e.g. under the watch service it is not used,
and the gate does the work inline).  It never touches the journal or the queue, it does
not log, and it leaves with ``os._exit``.  It ends when the parent closes its pipe, or
dies (kill -9: the pipe closes too).  When the child cannot answer — it died, or an item
raised something unexpected — the parent does that item itself, so every error comes out
exactly as it would inline.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from fspl_gateway.core.fsutil import write_all

#: Asked for both pipes: a few batches of requests and answers fit without blocking.
PIPE_BYTES = 1 << 20
#: Signatures per answer.
ANSWER_CHUNK = 8


class SigWorker:
    """One forked worker for one gate (see the module doc).  ``check_one(name)`` runs in
    the child and returns a msgpack-able answer (None: "do it yourself");
    ``delete_many(names)`` runs in the child and returns ``(name, error)`` pairs."""

    def __init__(self, pid: int, wfd: int, rfd: int) -> None:
        self.pid = pid
        self._w = wfd
        self._r = rfd
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        self._ready: dict[str, Any] = {}
        #: Check requests sent, their answers not yet read (names).
        self._asked = 0
        #: Deletions asked for, not yet answered (oldest first).
        self._deleting: list[list[str]] = []
        self.delete_failures: list[tuple[str, str]] = []
        self.alive = True

    @classmethod
    def start(cls, check_one: Callable[[str], Any],
              delete_many: Callable[[Sequence[str]], list[tuple[str, str]]]) -> SigWorker | None:
        """Fork the worker; None where forking is not safe (more than one thread) or fails."""
        if threading.active_count() != 1 or not hasattr(os, "fork"):
            return None
        to_child = os.pipe()
        to_parent = os.pipe()
        for fd in (to_child[1], to_parent[1]):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            pid = os.fork()
        except OSError:
            for fd in (*to_child, *to_parent):
                os.close(fd)
            return None
        if pid == 0:  # the child: serve, then leave without running the parent's exit code
            code = 0
            try:
                os.close(to_child[1])
                os.close(to_parent[0])
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                _serve(to_child[0], to_parent[1], check_one, delete_many)
            except BaseException:  # noqa: BLE001 - the parent sees EOF and works inline
                code = 1
            finally:
                os._exit(code)
        os.close(to_child[0])
        os.close(to_parent[1])
        for fd in (to_child[1], to_parent[0]):
            os.set_inheritable(fd, False)
        return cls(pid, to_child[1], to_parent[0])

    # -- parent side ---------------------------------------------------------------
    def _send(self, msg: list[Any]) -> bool:
        if not self.alive:
            return False
        try:
            write_all(self._w, msgpack.packb(msg, use_bin_type=True))
            return True
        except OSError:
            self.alive = False
            return False

    def ask(self, names: Sequence[str]) -> bool:
        """Have the child check ``names`` (in this order)."""
        if self._send(["c", list(names)]):
            self._asked += len(names)
            return True
        return False

    def delete(self, names: Sequence[str]) -> bool:
        """Have the child delete ``names`` (what it could not: :meth:`close`)."""
        if names and self._send(["d", list(names)]):
            self._deleting.append(list(names))
            return True
        return False

    def _read_one(self) -> bool:
        """Read the next answer; False at the child's end."""
        while True:
            for msg in self._unpacker:
                kind, body = msg
                if kind == "c":
                    for name, answer in body:
                        self._ready[name] = answer
                        self._asked -= 1
                else:
                    self._deleting.pop(0)
                    self.delete_failures += [(n, e) for n, e in body]
                return True
            try:
                data = os.read(self._r, 1 << 16)
            except OSError:
                data = b""
            if not data:
                self.alive = False
                return False
            self._unpacker.feed(data)

    def answer(self, name: str) -> Any:
        """The child's answer for ``name`` (asked before), or None (do it inline)."""
        while name not in self._ready:
            if not self.alive or self._asked <= 0 or not self._read_one():
                return None
        return self._ready.pop(name)

    def close(self) -> list[tuple[str, str]]:
        """End the child (its pending deletions done first); the deletions that failed,
        or that it never answered (it died): (name, why)."""
        with contextlib.suppress(OSError):
            os.close(self._w)
        while self.alive and self._read_one():
            pass
        os.close(self._r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        for names in self._deleting:
            self.delete_failures += [(n, "the signature worker ended first") for n in names]
        self._deleting = []
        return self.delete_failures


def _serve(rfd: int, wfd: int, check_one: Callable[[str], Any],
           delete_many: Callable[[Sequence[str]], list[tuple[str, str]]]) -> None:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
    while True:
        data = os.read(rfd, 1 << 16)
        if not data:
            return
        unpacker.feed(data)
        for kind, names in unpacker:
            if kind == "c":  # answered in small parts: the parent needs the first soon
                for i in range(0, len(names), ANSWER_CHUNK):
                    out: list[Any] = [(n, check_one(n)) for n in names[i:i + ANSWER_CHUNK]]
                    write_all(wfd, msgpack.packb(["c", out], use_bin_type=True))
            else:
                write_all(wfd, msgpack.packb(["d", delete_many(names)], use_bin_type=True))
