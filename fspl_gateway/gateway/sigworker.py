"""The signature worker: a forked child process that reads and checks the signatures of a
one-thread pull run ahead of its fetch, and deletes signature files behind it.

Why a process: a sync from a local directory (or a USB stick) runs in one thread — more
threads only contend for one disk — and with trust every job adds work of its own: read
and parse its ``.minisig``, verify an Ed25519 signature (~100 µs here, libsodium), and later delete
the ``.minisig`` (an unlink that frees a file: ~200 µs on this ext4, mounted with
``discard``: the unlink waits for the TRIM of the freed block).  In a thread, that work
contends with the fetch for the GIL, and the hand-offs cost about what they save
(measured: ``docs/benchmarks.md``, Trust).  A forked child shares nothing with the parent
at run time; it runs the gate's own code (:meth:`ReceiveGate._check
<fspl_gateway.gateway.trust.ReceiveGate._check>` and the transport's ``delete_many``) on
the second core, and the parent only exchanges a few bytes per job over two pipes
(msgpack frames).  It is forked at the start of the run and loads its keys and the
Ed25519 code while the parent lists the remote.  In the child, checks come first (the
parent waits for them); deletions run in other threads of the child
(:data:`DELETE_THREADS`), whose waits for the disk overlap.

Safety: the child is forked only when the parent runs a single thread (a fork copies no
other thread, so no lock can be left held — e.g. under the watch service it is not used,
and the gate does the work inline).  It never touches the journal or the queue, it does
not log, and it leaves with ``os._exit``.  It ends when the parent closes its pipe, or
dies (kill -9: the pipe closes too).  When the child cannot answer — it died, or an item
raised something unexpected — the parent does that item itself, so every error comes out
exactly as it would inline; a deletion it could not do is done by the parent.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import queue
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack

from fspl_gateway.core.fsutil import write_all

#: Asked for both pipes: a few batches of requests and answers fit without blocking.
PIPE_BYTES = 1 << 20
#: Signatures per answer.
ANSWER_CHUNK = 8
#: Threads that delete signature files in the worker: an unlink that frees a file's
#: blocks waits for the disk (on a file system mounted with ``discard`` it waits for a
#: TRIM: ~200 µs here), and several such waits overlap.
DELETE_THREADS = 4


class SigWorker:
    """One forked worker for one gate (see the module doc).  ``check_one(item)`` runs in
    the child and returns a msgpack-able answer (None: "do it yourself"), keyed by
    ``item[0]``; ``delete_many(names)`` runs in the child and returns ``(name, error)``
    pairs; ``init()`` runs in the child first (it loads what the checks need while the
    parent goes on)."""

    def __init__(self, pid: int, wfd: int, rfd: int) -> None:
        self.pid = pid
        self._w = wfd
        self._r = rfd
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        self._ready: dict[str, Any] = {}
        #: Check requests sent, their answers not yet read.
        self._asked = 0
        #: Deletions asked for, not yet answered (oldest first).
        self._deleting: list[list[str]] = []
        self.delete_failures: list[tuple[str, str]] = []
        self.alive = True
        #: Whether anything was asked of it (a worker never used is not waited for).
        self.used = False

    @classmethod
    def start(cls, check_one: Callable[[list[Any]], Any],
              delete_many: Callable[[Sequence[str]], list[tuple[str, str]]],
              init: Callable[[], object] | None = None) -> SigWorker | None:
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
                if init is not None:
                    init()
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
            self.used = True
            return True
        except OSError:
            self.alive = False
            return False

    def ask(self, items: Sequence[list[Any]]) -> bool:
        """Have the child check ``items`` (in this order; each answer is keyed by the
        item's first value)."""
        if self._send(["c", list(items)]):
            self._asked += len(items)
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
        if not self.used:  # it may still be loading its keys: nothing to wait for
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
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


def _serve(rfd: int, wfd: int, check_one: Callable[[list[Any]], Any],
           delete_many: Callable[[Sequence[str]], list[tuple[str, str]]]) -> None:
    """The child's loop.  Checks are answered by this thread, in small parts (the parent
    waits for them); deletion requests by another one, in the order asked, each answered
    whole once its parts are done by :data:`DELETE_THREADS` threads: an unlink that frees
    a file mostly waits for the disk, and meanwhile this thread checks.  At the parent's
    end (EOF) the checks still queued are dropped and the deletions finished."""
    sys.setswitchinterval(0.0005)  # the deleting thread waits less for the checking one
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
    lock = threading.Lock()

    def send(msg: list[Any]) -> None:
        frame = msgpack.packb(msg, use_bin_type=True)
        with lock:
            write_all(wfd, frame)

    deletes: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
    pool = ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="sig-delete")

    def deleter() -> None:
        while (names := deletes.get()) is not None:
            k = -(-len(names) // DELETE_THREADS)
            try:
                parts = pool.map(delete_many, [names[i:i + k] for i in range(0, len(names), k)])
                failures = [failure for part in parts for failure in part]
            except Exception as err:  # noqa: BLE001 - the parent deletes them itself
                failures = [(n, str(err)) for n in names]
            send(["d", failures])

    thread = threading.Thread(target=deleter, name="sig-deletions", daemon=True)
    thread.start()
    checks: collections.deque[list[Any]] = collections.deque()
    poll = select.poll()
    poll.register(rfd, select.POLLIN)
    try:
        while True:
            if not checks or poll.poll(0):  # idle: wait for a request
                data = os.read(rfd, 1 << 16)
                if not data:
                    return
                unpacker.feed(data)
                for kind, body in unpacker:
                    if kind == "c":
                        checks.extend(body)
                    else:
                        deletes.put(body)
            if checks:
                part = [checks.popleft() for _ in range(min(ANSWER_CHUNK, len(checks)))]
                send(["c", [(item[0], check_one(item)) for item in part]])
    finally:
        deletes.put(None)
        thread.join()
        pool.shutdown()
