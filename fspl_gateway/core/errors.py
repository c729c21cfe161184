"""One exception hierarchy for the whole tool.

The CLI turns any :class:`FsplError` into a one-line ``Error: …`` message on stderr and
the exception's ``exit_code``; nothing that a user can cause ends in a traceback.

Exit codes (documented in the README):

* 0 — success, including "nothing to do"
* 1 — an error (I/O, lock busy, bad packet on stdin, failing command under Retry, …)
* 2 — usage error (bad option or argument; click's own convention)
* 3 — sync/push finished but some jobs were quarantined or failed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


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
    """Something a transport could not do. Subclasses say whether retrying may help."""

    #: True when the same call may succeed later (network drop, 5xx, throttling).
    transient = False


class TransientError(TransportError):
    """A temporary failure: the sync/push engines retry these with backoff."""

    transient = True


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


class QuarantinedError(FsplError):
    """A fetched file was set aside in quarantine (bad header, name clash)."""

    exit_code = EXIT_PARTIAL
