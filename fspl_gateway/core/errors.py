"""One exception hierarchy for the whole tool.

The CLI turns any :class:`FsplError` into a one-line ``Error: …`` message on stderr and
the exception's ``exit_code``; nothing that a user can cause ends in a traceback.

Exit codes: :data:`EXIT_CODES` (the README's table and the man page say the same).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

#: Every exit code and when it is used.
EXIT_CODES = {
    EXIT_OK: 'success, including "nothing to do", unparsable files skipped, --maxjobs '
             "reached, a sync, push or import that found its queue busy",
    EXIT_ERROR: "an error: I/O, lock busy, missing job id, duplicate sequence number, a "
                "failing command under --on-error retry, a transport error",
    EXIT_USAGE: "usage: unknown option, bad value, unknown remote in the config file, a "
                "remote that cannot serve the command (multi-host workers on a transport "
                "without atomic no-clobber writes)",
    EXIT_PARTIAL: "a sync, push or import finished, but some jobs were quarantined, "
                  "rejected or failed",
}


class FsplError(Exception):
    """Base class: a failure we can explain in one line."""

    exit_code = EXIT_ERROR


class UsageError(FsplError):
    exit_code = EXIT_USAGE


class PacketError(FsplError):
    """A job file whose header or metadata cannot be decoded."""


class LockBusyError(FsplError):
    """A sequence-file lock is held by another process."""


class SeqFileError(FsplError):
    """The sequence file is missing, unreadable or not a number."""


class QueueError(FsplError):
    """A queue directory problem (missing, duplicate sequence numbers, missing job)."""


class JobFailedError(FsplError):
    """A command failed and the on-error policy is Retry."""


class ConfigError(FsplError):
    """The configuration file or a named remote is wrong."""

    exit_code = EXIT_USAGE


class TransportError(FsplError):
    """Something a transport could not do. Subclasses say whether retrying may help.

    Transports classify, they never retry: the one retry policy
    (:mod:`fspl_gateway.gateway.retry`) acts on :attr:`transient` and :attr:`retry_after`.
    """

    #: True when the same call may succeed later (network drop, 5xx, throttling).
    transient = False
    #: Seconds the server asked us to wait before trying again (HTTP Retry-After,
    #: Dropbox's rate-limit backoff), if it said.
    retry_after: float | None = None


class TransientError(TransportError):
    """A temporary failure: the retry policy tries the operation again after a backoff
    of at least ``retry_after`` seconds when given."""

    transient = True

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        if retry_after is not None:
            self.retry_after = max(0.0, float(retry_after))


class RemoteNotFoundError(TransportError):
    """The named remote file (or the remote queue itself) does not exist."""


class RemoteExistsError(TransportError):
    """A write would overwrite an existing remote file; nothing was written."""


class IntegrityError(TransportError):
    """Bytes read or written do not match the remote's size/checksum."""

    transient = True


class AuthError(TransportError):
    """Credentials missing, wrong, expired or revoked."""


class HostKeyError(TransportError):
    """An SSH host key is unknown or has changed."""


class NotSupportedError(TransportError):
    """The transport cannot do this at all (e.g. delete on a CD image)."""


class PartialFailure(FsplError):
    """A run (sync, push, import) finished, but some jobs were quarantined, conflicting,
    rejected or failed; the others were done.  The only error with exit code 3."""

    exit_code = EXIT_PARTIAL
