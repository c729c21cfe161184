"""The OpenSSH data path: SFTP spoken over the pipes of the system ``ssh``.

Each SFTP channel is one ``ssh … -s HOST sftp`` process (like ``rclone --sftp-ssh`` and
sshfs), so ciphers and MACs run in OpenSSH's C code, and ``~/.ssh/config``, the agent,
ControlMaster, ProxyJump and known_hosts behave as the user's own ``ssh`` does.  Our
options are mapped onto ``ssh`` options (:func:`ssh_argv`); host-key checking is never
weaker than the paramiko path's: ``BatchMode=yes`` (no prompt, ever) and
``StrictHostKeyChecking=yes`` (``accept-new`` with ``accept_new_host_key``), given on the
command line so that a laxer user config cannot override them.

The process's stdin and stdout are one end of a socketpair (:class:`PipeStream`), which
:class:`~fspl_gateway.transports.sftp.protocol.Client` reads with ``recv_into`` (no
quadratic re-buffering) under the transport's timeout; its stderr goes to a temporary
file, summarised into one line when ssh fails (:func:`classify`): an unknown or changed
host key → HostKeyError, refused keys → AuthError, anything else (refused, unreachable,
dropped) → TransientError.  When ``ssh`` dies mid-transfer the socket reports EOF or a
broken pipe, which the protocol layer maps to a TransientError (the pool then starts a
fresh process).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from typing import IO, Any

import paramiko

from fspl_gateway.core.errors import AuthError, ConfigError, HostKeyError, TransientError
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.sftp.hostkeys import HostKeyPolicy
from fspl_gateway.transports.sftp.protocol import Client

log = get_logger(__name__)

#: Seconds between ssh's keepalives (``ServerAliveInterval``), as on the paramiko path.
KEEPALIVE = 30
#: Socket buffer for the pipe to ssh (both directions).
SOCKBUF = 1 << 20


def find_ssh(command: str | None) -> list[str] | None:
    """The ssh command as an argv prefix: ``command`` (shell words) if given, else the
    ``ssh`` on PATH; None when there is none."""
    if command:
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise ConfigError(f"sftp option ssh_command: {e}") from None
        if not argv:
            raise ConfigError("sftp option ssh_command is empty")
        return argv
    path = shutil.which("ssh")
    return [path] if path else None


def _quote(path: str) -> str:
    """A file name as ssh's option parser reads it (double quotes if it has blanks)."""
    if re.search(r'[\s"]', path):
        if '"' in path:
            raise ConfigError(f"path {path!r}: a double quote cannot be passed to ssh")
        return f'"{path}"'
    return path


def ssh_argv(command: list[str], *, host: str, user: str | None, port: int | None,
             config: str | None, identity_files: list[str], allow_agent: bool,
             hostkeys: HostKeyPolicy, known_hosts_given: bool, host_key_alias: str | None,
             timeout: float) -> list[str]:
    """The full ``ssh`` command line for one SFTP session.

    ``host`` is the location's host (an alias of the SSH config is resolved by ssh
    itself); ``user``/``port`` only when the location names them; ``config`` is the
    ``ssh_config`` option (None: ssh's own default; ``none``: no config file)."""
    if host.startswith("-"):
        raise ConfigError(f"bad SSH host {host!r}")
    # ssh takes the first value it sees for an option: the host-key rules go right after
    # the program, before the words of a custom command, so nothing can weaken them
    argv = [command[0],
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=" + ("accept-new" if hostkeys.accept_new else "yes"),
            *command[1:]]
    if config is not None:
        argv += ["-F", "none" if str(config).strip().lower() in ("none", "") else str(config)]
    argv += ["-x", "-a", "-T",
             "-o", f"ConnectTimeout={max(1, math.ceil(timeout))}",
             "-o", f"ServerAliveInterval={KEEPALIVE}",
             "-o", "ClearAllForwardings=yes",
             "-o", "PermitLocalCommand=no"]
    if known_hosts_given:
        # the record file first: ssh records a new key in the first UserKnownHostsFile
        files = [hostkeys.record_file()]
        files += [f for f in (*hostkeys.user_files, *hostkeys.extra_files) if f not in files]
        argv += ["-o", "UserKnownHostsFile=" + " ".join(_quote(f) for f in files)]
    if host_key_alias:
        argv += ["-o", f"HostKeyAlias={host_key_alias}"]
    if not allow_agent:
        argv += ["-o", "IdentityAgent=none"]
    for f in identity_files:
        argv += ["-i", f]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", str(port)]
    return [*argv, "-s", host, "sftp"]


def has_aes_instructions() -> bool:
    """True when the CPU has AES instructions (x86 ``aes`` flag, ARM ``aes`` feature)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return False
    return bool(re.search(r"^(flags|Features)\s*:.*\baes\b", text, re.M))


def aes_gcm_first(argv: list[str], timeout: float) -> list[str]:
    """``argv`` with ``-o Ciphers=…`` added: the cipher list this ssh would use anyway
    (``ssh -G``: its defaults, or what the user's config says), AES-GCM moved to the
    front.  Nothing is added to the list; unchanged when it has no AES-GCM, already
    starts with it, or ``ssh -G`` fails.  (OpenSSH's default puts chacha20-poly1305
    first, which costs both ends about twice the CPU of AES-GCM where the CPU has AES
    instructions.)"""
    cmd = [*argv[:-3], "-G", argv[-2]]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired):
        return argv
    m = re.search(rb"^ciphers (\S+)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        return argv
    ciphers = m.group(1).decode().split(",")
    gcm = [c for c in ciphers if c.startswith("aes") and "gcm" in c]
    if not gcm or ciphers[0] in gcm:
        return argv
    order = gcm + [c for c in ciphers if c not in gcm]
    return [*argv[:-3], "-o", "Ciphers=" + ",".join(order), *argv[-3:]]


class PipeStream:
    """Our end of the socketpair that is ssh's stdin and stdout (paramiko's SFTPClient
    needs ``send``/``recv``; ``recv_into`` is the fast path of our Client)."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        self.argv = argv
        ours, theirs = socket.socketpair()
        for s in (ours, theirs):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKBUF)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKBUF)
        self.err: IO[bytes] = tempfile.TemporaryFile(prefix="fspl-gw-ssh-")
        try:
            self.proc = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=theirs.fileno(),
                                         stderr=self.err,
                                         close_fds=True, start_new_session=True)
        except OSError as e:
            ours.close()
            self.err.close()
            raise ConfigError(f"cannot run the ssh command {argv[0]!r}: "
                              f"{e.strerror or e}") from None
        finally:
            theirs.close()
        ours.settimeout(timeout)
        self.sock = ours
        self._held: list[bytes] | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- the socket interface paramiko's SFTPClient uses ----------------------------
    def send(self, data: Any) -> int:
        if self._held is not None:
            self._held.append(bytes(data))
        else:
            self.sock.sendall(data)
        return len(data)

    def cork(self) -> None:
        """Hold what is sent until :meth:`uncork`, then write it at once: ssh reads it in
        one piece and sends it in one SSH packet (ssh leaves Nagle's algorithm on for a
        subsystem, which would hold a second small packet back until the first is
        acknowledged: a round trip on a slow link)."""
        self._held = []

    def uncork(self) -> None:
        held, self._held = self._held, None
        if held:
            self.sock.sendall(b"".join(held))

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def recv_into(self, buf: Any) -> int:
        return self.sock.recv_into(buf)

    def get_name(self) -> str:  # paramiko's log lines name the channel
        return f"ssh:{self.proc.pid}"

    @property
    def closed(self) -> bool:
        return self._closed or self.proc.poll() is not None

    @property
    def eof_received(self) -> bool:
        return self.closed

    def stderr_text(self) -> str:
        try:
            self.err.seek(0)
            return self.err.read(65536).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        # EOF on its stdin ends ssh (it closes the channel); do not wait long for that
        if self.wait_exit(2) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            if self.wait_exit(2) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.err.close()


def _lines(text: str) -> list[str]:
    out = []
    for ln in text.replace("\r", "").splitlines():
        ln = ln.strip()
        if not ln or set(ln) <= {"@"} or ln.startswith("debug"):
            continue
        out.append(ln.strip("@ ").strip())
    return out


def classify(stderr: str, rc: int | None, *, entry: str, user: str, hostkeys: HostKeyPolicy,
             tried: str, fingerprint: str | None = None) -> Exception:
    """ssh failed before the SFTP session started: one clear error from its stderr."""
    lines = _lines(stderr)
    text = " ".join(lines)
    summary = "; ".join(lines[-3:]) if lines else (
        f"ssh exited with status {rc}" if rc is not None else "ssh closed the session")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Offending" in text:
        sent = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", text)
        kind = re.search(r"fingerprint for the (\S+) key", text)
        off = re.search(r"Offending (\S+ key in \S+)", text)
        return HostKeyError(
            f"REMOTE HOST IDENTIFICATION HAS CHANGED for {entry}: the server sent a "
            f"{kind.group(1) if kind else ''} key {sent.group(1) if sent else '(unknown)'}"
            f"{', but ssh has another: ' + off.group(1) if off else ''}; someone may be "
            "intercepting the connection (or the host key was replaced); refusing to connect")
    m = re.search(r"No (\S+) host key is known for (\S+)", text)
    if m or "Host key verification failed" in text:
        label = m.group(1) if m else "its"
        fp = f"{label} key fingerprint is {fingerprint}" if fingerprint else (
            f"ssh says: {summary}")
        return HostKeyError(
            f"unknown SSH host {entry}: {fp}; verify it and add it to "
            f"{hostkeys.record_file()} (or set the sftp option accept_new_host_key)")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return AuthError(
            f"SSH authentication as {user}@{entry} failed (ssh: {summary}; tried: {tried}; "
            "an encrypted key needs ssh-agent on the OpenSSH path, or the sftp option "
            "ssh=paramiko with its passphrase in the environment)")
    if "Could not resolve hostname" in text:
        return TransientError(f"cannot resolve SSH host: {summary}")
    return TransientError(f"ssh to {entry} failed: {summary}")


def probe_fingerprint(argv: list[str], timeout: float) -> str | None:
    """The server's host key fingerprint, from ``ssh -v`` refusing the unknown host again
    (for the error message only)."""
    cmd = [*argv[:-3], "-v", "-o", "StrictHostKeyChecking=yes", *argv[-3:]]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(rb"Server host key: \S+ (SHA256:[A-Za-z0-9+/=]+)", r.stderr)
    return m.group(1).decode() if m else None


class OpenSSHConnection:
    """What the pool calls a connection: on this path every channel is its own ``ssh``
    process, so there is nothing shared to lose (:meth:`is_active` is True until
    closed)."""

    def __init__(self, argv: list[str], timeout: float, *, entry: str, user: str,
                 hostkeys: HostKeyPolicy, tried: str, stats: dict[str, int]) -> None:
        self.argv = argv
        self.timeout = timeout
        self.entry = entry
        self.user = user
        self.hostkeys = hostkeys
        self.tried = tried
        self.stats = stats
        self._closed = False

    def is_active(self) -> bool:
        return not self._closed

    def open_sftp(self) -> Client:
        log.debug("sftp: running %s", shlex.join(self.argv))
        stream = PipeStream(self.argv, self.timeout)
        try:
            client = Client(stream)
        except (paramiko.SSHException, EOFError, OSError) as e:
            rc = stream.wait_exit(self.timeout)
            err = stream.stderr_text()
            stream.close()
            if rc is None and not err:
                raise TransientError(f"ssh to {self.entry}: no SFTP session "
                                     f"({e or type(e).__name__})") from None
            fp = None
            if re.search(r"No \S+ host key is known", err):
                fp = probe_fingerprint(self.argv, self.timeout)
            raise classify(err, rc, entry=self.entry, user=self.user, hostkeys=self.hostkeys,
                           tried=self.tried, fingerprint=fp) from None
        except BaseException:
            stream.close()
            raise
        self.stats["connects"] += 1
        return client

    def close(self) -> None:
        self._closed = True
