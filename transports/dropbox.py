"""The Dropbox transport, through the official ``dropbox`` SDK (API v2).

Location: the Dropbox path of the remote queue (``/queues/site-b``); job files live in
its ``jobs/`` folder (``/queues/site-b/jobs``).

Authentication (options first, then environment variables; never logged):

* preferred: a refresh token + the app key (+ the app secret unless the token was
  obtained with PKCE): ``refresh_token`` / ``FSPL_GW_DROPBOX_REFRESH_TOKEN``,
  ``app_key`` / ``FSPL_GW_DROPBOX_APP_KEY``, ``app_secret`` /
  ``FSPL_GW_DROPBOX_APP_SECRET``.  The SDK obtains and renews short-lived access tokens.
* or a short-lived access token: ``access_token`` / ``FSPL_GW_DROPBOX_ACCESS_TOKEN``
  (it expires after a few hours; the transport then fails with a clear AuthError).

Every option (credentials, ``ca_bundle``, ``chunk_size``, timeouts) is declared in
:data:`OPTIONS`, with its environment fallback; the README's table is generated from it.
``longpoll_timeout`` is the longest one :meth:`~DropboxTransport.wait_for_change` longpoll
waits (Dropbox accepts 30–480 s and may add up to 90 s of jitter).

Change notification: :meth:`~DropboxTransport.wait_for_change` takes a cursor of
``jobs/`` once (``list_folder/get_latest_cursor``), then waits on
``list_folder/longpoll`` (the notify host; no access token is sent there) and takes a
fresh cursor after each change; a ``backoff`` in the answer delays the next longpoll
(at most 5 minutes); a ``reset`` cursor is replaced and reported as a change.

Integrity: Dropbox's ``content_hash`` (SHA-256 of the concatenated SHA-256 digests of
each 4 MiB block) is computed while streaming, in both directions, and compared with the
one Dropbox reports; uploads never overwrite (``WriteMode.add``, ``autorename=False``):
an upload session's file appears only at ``finish``, whole.

Retries: none here.  The SDK's own retry loops are switched off (they sleep unbounded)
and requests retries nothing; each call is made once and its failure classified:
throttling (429, with Dropbox's backoff as ``retry_after``), 5xx and broken connections
are TransientError, retried per operation by :mod:`fspl_gateway.gateway.retry`.  A call
whose answer was lost may have happened: an upload retried after it meets a conflict
(the caller compares the bytes), a delete retried after it meets "not found".
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, NoReturn, TypeVar

import dropbox
import requests
import urllib3.exceptions
from dropbox import exceptions as dbx_exc
from dropbox import files as dbx_files

from fspl_gateway.core.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)
from fspl_gateway.core.log import get_logger
from fspl_gateway.transports.base import (
    Capabilities,
    RemoteEntry,
    Transport,
    check_listed_size,
    check_not_more,
    listed_size,
)
from fspl_gateway.transports.options import Option, OptionSchema, OptionType

log = get_logger(__name__)

#: Dropbox hashes content in blocks of this size.
HASH_BLOCK = 4 * 1024 * 1024
DEFAULT_CHUNK = 8 * 1024 * 1024
MAX_CHUNK = 128 * 1024 * 1024
READ_CHUNK = 1 << 20
#: The bounds of list_folder/longpoll's ``timeout`` in the API.
LONGPOLL_MIN = 30
LONGPOLL_MAX = 480
#: At most this long a ``backoff`` from longpoll delays the next one.
LONGPOLL_BACKOFF_MAX = 300.0

ENV_REFRESH_TOKEN = "FSPL_GW_DROPBOX_REFRESH_TOKEN"
ENV_APP_KEY = "FSPL_GW_DROPBOX_APP_KEY"
ENV_APP_SECRET = "FSPL_GW_DROPBOX_APP_SECRET"
ENV_ACCESS_TOKEN = "FSPL_GW_DROPBOX_ACCESS_TOKEN"
ENV_CA_BUNDLE = "FSPL_GW_DROPBOX_CA_BUNDLE"

OPTIONS = OptionSchema(
    Option("refresh_token", OptionType.STR, secret=True, env=(ENV_REFRESH_TOKEN,),
           help="OAuth refresh token (preferred; needs the app key)."),
    Option("app_key", OptionType.STR, secret=True, env=(ENV_APP_KEY,),
           help="The app key of your Dropbox app."),
    Option("app_secret", OptionType.STR, secret=True, env=(ENV_APP_SECRET,),
           help="The app secret (not needed for PKCE refresh tokens)."),
    Option("access_token", OptionType.STR, secret=True, env=(ENV_ACCESS_TOKEN,),
           help="A short-lived access token instead of a refresh token."),
    Option("ca_bundle", OptionType.PATH, env=(ENV_CA_BUNDLE,),
           help="CA certificates (PEM) to trust instead of the system's (proxies, tests)."),
    Option("chunk_size", OptionType.SIZE, default=DEFAULT_CHUNK, minimum=1, maximum=MAX_CHUNK,
           help="Files up to this size in one upload request, bigger ones in upload "
                "sessions of such parts."),
    Option("retries", OptionType.INT, "", deprecated="operations are retried by the one "
           "retry policy: `--retries` (a `retries` key of a watch pipeline)"),
    Option("max_retry_sleep", OptionType.DURATION, "", deprecated="the retry policy honours "
           "Retry-After up to 5 minutes"),
    Option("timeout", OptionType.DURATION, default=100.0, minimum=0.1,
           help="Socket inactivity timeout."),
    Option("longpoll_timeout", OptionType.DURATION, default=120.0, minimum=LONGPOLL_MIN,
           maximum=LONGPOLL_MAX,
           help="The longest one longpoll waits for a change (`watch`)."),
)

#: What may break a connection mid-request or mid-body: worth a retry.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)

T = TypeVar("T")


class ContentHasher:
    """Dropbox's ``content_hash``, fed incrementally (hashlib-like)."""

    def __init__(self) -> None:
        self._overall = hashlib.sha256()
        self._block = hashlib.sha256()
        self._pos = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(HASH_BLOCK - self._pos, len(view))
            self._block.update(view[:take])
            self._pos += take
            view = view[take:]
            if self._pos == HASH_BLOCK:
                self._overall.update(self._block.digest())
                self._block = hashlib.sha256()
                self._pos = 0

    def hexdigest(self) -> str:
        overall = self._overall.copy()
        if self._pos:
            overall.update(self._block.digest())
        return overall.hexdigest()


def content_hash(data: bytes) -> str:
    """Dropbox's ``content_hash`` of ``data``."""
    h = ContentHasher()
    h.update(data)
    return h.hexdigest()


def _mtime(meta: Any) -> float | None:
    ts = getattr(meta, "server_modified", None)
    if not isinstance(ts, datetime):
        return None
    return ts.replace(tzinfo=UTC).timestamp() if ts.tzinfo is None else ts.timestamp()


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes from ``src`` (fewer only at its end)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = src.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _short(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit] + "…"


class _CABundleSession(requests.Session):
    """A requests session that trusts exactly ``ca_bundle``.

    ``dropbox.create_session(ca_certs=…)`` sets ``session.verify``, but requests lets the
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE environment variables override a session's
    ``verify`` (requests issue #3829), so on hosts that set them the option was silently
    ignored.  Here the session's own bundle wins; proxies from the environment still
    apply.
    """

    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.verify = ca_bundle

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> dict[str, Any]:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None or verify is True:
            settings["verify"] = self.verify
        return settings


class _Download(io.RawIOBase):
    """A streamed download: hashes as it goes, checks size and content_hash at the end."""

    def __init__(self, name: str, meta: Any, resp: requests.Response) -> None:
        super().__init__()
        self.name_ = name
        self.meta = meta
        self.resp = resp
        self._hasher = ContentHasher()
        self._count = 0
        self._gen = self.chunks()
        self._buf = b""
        self._off = 0

    def chunks(self) -> Iterator[bytes]:
        it = self.resp.iter_content(READ_CHUNK)
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                break
            except _NETWORK_ERRORS + (OSError,) as e:
                raise TransientError(
                    f"{self.name_}: the Dropbox download broke off after {self._count} of "
                    f"{self.meta.size} bytes ({type(e).__name__}); retry") from None
            if not chunk:
                continue
            self._hasher.update(chunk)
            self._count += len(chunk)
            yield chunk
        self.resp.close()
        if self._count != self.meta.size:
            raise TransientError(f"{self.name_}: the Dropbox download ended after "
                                 f"{self._count} of {self.meta.size} bytes; retry")
        want = self.meta.content_hash
        got = self._hasher.hexdigest()
        if want and got != want:
            raise IntegrityError(f"{self.name_}: downloaded bytes have content_hash {got}, "
                                 f"Dropbox says {want}")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._off >= len(self._buf):
            try:
                self._buf = next(self._gen)
            except StopIteration:
                return 0
            self._off = 0
        k = min(len(b), len(self._buf) - self._off)
        b[:k] = self._buf[self._off:self._off + k]
        self._off += k
        return k

    def close(self) -> None:
        if not self.closed:
            self.resp.close()
        super().close()


class DropboxTransport(Transport):
    name = "dropbox"
    capabilities = Capabilities(can_write=True, can_delete=True, atomic_noclobber=True)
    options_schema = OPTIONS

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        loc = (location or "").strip()
        if not loc.startswith("/"):
            raise ConfigError(f"dropbox: the location must be a Dropbox path starting with "
                              f"'/' (e.g. /queues/site-b), not {location!r}")
        loc = loc.rstrip("/")
        if any(p in (".", "..") for p in loc.split("/")[1:]) or "//" in loc:
            raise ConfigError(f"dropbox: bad location {location!r}")
        self.root = loc  # "" for the Dropbox root
        self.jobs_path = f"{loc}/{self.area}"
        o = self.settings
        self.chunk_size: int = o["chunk_size"]
        self.timeout: float = o["timeout"]
        self.longpoll_timeout = int(o["longpoll_timeout"])
        self._cursor: str | None = None
        self._longpoll_not_before = 0.0

        access, refresh = o["access_token"], o["refresh_token"]
        app_key, app_secret = o["app_key"], o["app_secret"]
        if not (access or refresh):
            raise AuthError(
                f"no Dropbox credentials: set {ENV_REFRESH_TOKEN} and {ENV_APP_KEY} (and "
                f"{ENV_APP_SECRET}), or {ENV_ACCESS_TOKEN}, or the refresh_token/app_key/"
                f"app_secret or access_token options")
        if refresh and not app_key:
            raise AuthError(f"a Dropbox refresh token needs the app key: set {ENV_APP_KEY} "
                            f"(or the app_key option)")
        self._can_refresh = bool(refresh)

        ca = o["ca_bundle"]
        session = None
        if ca:
            if not os.path.isfile(ca):
                raise ConfigError(f"dropbox: ca_bundle {ca!r} is not a readable file")
            session = _CABundleSession(ca)
        try:
            self.dbx = dropbox.Dropbox(
                oauth2_access_token=access,
                oauth2_refresh_token=refresh,
                app_key=app_key,
                app_secret=app_secret,
                session=session,
                timeout=self.timeout,
                max_retries_on_error=0,
                max_retries_on_rate_limit=0,
                user_agent="fspl-gateway",
            )
        except dbx_exc.BadInputException as e:
            raise AuthError(f"dropbox: bad credentials configuration: {_short(e)}") from None

    def describe(self) -> str:
        return f"dropbox:{self.root or '/'}"

    def _path(self, name: str) -> str:
        self.check_name(name)
        return f"{self.jobs_path}/{name}"

    # -- calls ------------------------------------------------------------------------
    def _auth_error(self, e: dbx_exc.AuthError) -> AuthError:
        err = e.error
        tag = getattr(err, "_tag", None) or "unknown"
        if tag == "expired_access_token":
            if self._can_refresh:
                return AuthError("the Dropbox access token has expired and could not be renewed "
                                 "with the refresh token")
            return AuthError(
                f"the Dropbox access token has expired; configure a refresh token "
                f"({ENV_REFRESH_TOKEN} with {ENV_APP_KEY} and {ENV_APP_SECRET}, or the "
                f"refresh_token/app_key/app_secret options) so that it is renewed "
                f"automatically")
        if tag == "invalid_access_token":
            if self._can_refresh:
                return AuthError("Dropbox refused the credentials: the refresh token is "
                                 "invalid or has been revoked")
            return AuthError("Dropbox refused the access token: invalid or revoked")
        if tag == "missing_scope":
            scope = getattr(err.get_missing_scope(), "required_scope", "?")
            return AuthError(f"the Dropbox app lacks the permission {scope!r}; enable it in "
                             f"the app console and authorize again")
        return AuthError(f"Dropbox refused the credentials ({tag})")

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with its errors classified, once (no retries here: the
        caller's retry policy retries a TransientError, after at least its
        ``retry_after``).  Route errors (ApiError) are left to the caller to map."""
        try:
            return fn(*args, **kwargs)
        except dbx_exc.ApiError:
            raise
        except dbx_exc.AuthError as e:
            raise self._auth_error(e) from None
        except dbx_exc.RateLimitError as e:
            wait = float(e.backoff) if e.backoff is not None else None
            raise TransientError(f"{what}: Dropbox is rate-limiting us (too_many_requests"
                                 + (f"; retry after {wait:g} s)" if wait is not None else ")"),
                                 retry_after=wait) from None
        except dbx_exc.InternalServerError as e:
            raise TransientError(f"{what}: Dropbox server error {e.status_code}") from None
        except dbx_exc.BadInputError as e:
            body = str(getattr(e, "message", "") or e)
            if "invalid_client" in body:
                raise AuthError("Dropbox refused the app key/secret (invalid_client)") from None
            raise TransportError(f"{what}: Dropbox rejected the request: {_short(body)}") from None
        except dbx_exc.HttpError as e:
            if e.status_code in (502, 503, 504):
                raise TransientError(f"{what}: Dropbox HTTP {e.status_code}") from None
            raise TransportError(f"{what}: Dropbox answered HTTP {e.status_code}: "
                                 f"{_short(e.body)}") from None
        except requests.exceptions.SSLError as e:
            m = (re.search(r"certificate verify failed[^'\"()]*", str(e))
                 or re.search(r"\[SSL[^\]]*\]", str(e)))
            reason = m.group(0).strip() if m else type(e).__name__
            raise TransportError(f"{what}: TLS failure talking to Dropbox ({reason}); "
                                 f"check ca_bundle") from None
        except _NETWORK_ERRORS as e:
            raise TransientError(f"{what}: connection to Dropbox failed "
                                 f"({type(e).__name__})") from None

    # -- the interface ----------------------------------------------------------------
    def _folder_error(self, what: str, e: dbx_exc.ApiError) -> TransportError:
        """Map a ListFolderError (list_folder, …/continue, …/get_latest_cursor)."""
        err = e.error
        if err.is_path():
            look = err.get_path()
            if look.is_not_found():
                return RemoteNotFoundError(f"{self.describe()}: the Dropbox folder "
                                           f"{self.jobs_path} does not exist")
            if look.is_not_folder():
                return TransportError(f"{self.describe()}: {self.jobs_path} is a file, "
                                      f"not a folder")
        if getattr(err, "is_reset", lambda: False)():
            return TransientError(f"{what}: Dropbox reset the listing cursor; list again")
        return TransportError(f"{what}: {_short(e.error)}")

    def list(self) -> Iterator[RemoteEntry]:
        what = f"{self.describe()}: list"
        try:
            res = self._call(what, self.dbx.files_list_folder, self.jobs_path)
            while True:
                for e in res.entries:
                    if isinstance(e, dbx_files.FileMetadata):
                        yield RemoteEntry(name=e.name, size=e.size, tag=e.content_hash,
                                          mtime=_mtime(e))
                if not res.has_more:
                    return
                res = self._call(what, self.dbx.files_list_folder_continue, res.cursor)
        except dbx_exc.ApiError as e:
            raise self._folder_error(what, e) from None

    # -- change notification ----------------------------------------------------------
    def _latest_cursor(self) -> str:
        what = f"{self.describe()}: get_latest_cursor"
        try:
            res = self._call(what, self.dbx.files_list_folder_get_latest_cursor, self.jobs_path)
        except dbx_exc.ApiError as e:
            raise self._folder_error(what, e) from None
        return str(res.cursor)

    def wait_for_change(self, timeout: float) -> bool | None:
        """Longpoll ``jobs/`` for up to ``timeout`` seconds, rounded into
        [30, ``longpoll_timeout``] (Dropbox may answer up to 90 s later still).  The first
        call only takes the cursor and returns True at once (a change before it cannot be
        seen), as does a call after a ``reset`` cursor.  One thread at a time."""
        pause = self._longpoll_not_before - time.monotonic()
        if pause > 0:  # the server asked us to back off
            time.sleep(min(pause, max(0.0, timeout)))
            if self._longpoll_not_before > time.monotonic():
                return False
        if self._cursor is None:
            self._cursor = self._latest_cursor()
            return True
        try:
            want = int(min(float(timeout), float(self.longpoll_timeout)))
        except (OverflowError, ValueError):  # inf, nan
            want = self.longpoll_timeout
        secs = max(LONGPOLL_MIN, min(LONGPOLL_MAX, want))
        what = f"{self.describe()}: longpoll"
        try:
            res = self._call(what, self.dbx.files_list_folder_longpoll, self._cursor,
                             timeout=secs)
        except dbx_exc.ApiError as e:
            if getattr(e.error, "is_reset", lambda: False)():
                log.info("%s: Dropbox reset the longpoll cursor; taking a new one",
                         self.describe())
                self._cursor = None
                self._cursor = self._latest_cursor()
                return True
            raise TransportError(f"{what}: {_short(e.error)}") from None
        if res.backoff:
            self._longpoll_not_before = time.monotonic() + min(float(res.backoff),
                                                               LONGPOLL_BACKOFF_MAX)
        if not res.changes:
            return False
        # A fresh cursor before the caller lists: a change after this point shows up at
        # the next longpoll.  If taking it fails, the next call takes one (and says True).
        self._cursor = None
        with contextlib.suppress(TransportError):
            self._cursor = self._latest_cursor()
        return True

    def _download(self, name: str) -> _Download:
        path = self._path(name)
        try:
            meta, resp = self._call(f"{name}: download", self.dbx.files_download, path)
        except dbx_exc.ApiError as e:
            err = e.error
            if err.is_path() and err.get_path().is_not_found():
                raise RemoteNotFoundError(f"{name}: not found in Dropbox "
                                          f"{self.jobs_path}") from None
            raise TransportError(f"{name}: Dropbox download refused: "
                                 f"{_short(e.error)}") from None
        return _Download(name, meta, resp)

    def open(self, name: str) -> BinaryIO:
        return self._download(name)  # type: ignore[return-value]

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        dl = self._download(name)
        limit = listed_size(entry)
        n = 0
        try:
            for chunk in dl.chunks():
                if limit is not None and n + len(chunk) > limit:
                    chunk = chunk[:limit + 1 - n]  # never accept more than listed
                dst.write(chunk)
                n += len(chunk)
                check_not_more(name, n, limit)
        finally:
            dl.close()
        check_listed_size(name, n, entry)
        return n

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self.require("can_write")
        path = self._path(name)
        if size < 0:
            raise TransportError(f"{name}: negative size {size}")
        hasher = ContentHasher()
        mode = dbx_files.WriteMode.add

        def read_part(n: int, done: int) -> bytes:
            data = _read_exact(src, n)
            if len(data) != n:
                raise TransportError(f"{name}: the source ended after {done + len(data)} of "
                                     f"{size} bytes; nothing was written to Dropbox")
            hasher.update(data)
            return data

        try:
            if size <= self.chunk_size:
                data = read_part(size, 0)
                self._check_src_end(src, name, size)
                meta = self._call(f"{name}: upload", self.dbx.files_upload, data, path,
                                  mode=mode, autorename=False, mute=True)
            else:
                meta = self._upload_session(name, path, size, read_part, src)
        except dbx_exc.ApiError as e:
            self._upload_error(name, e)
        ours = hasher.hexdigest()
        if meta.size != size or (meta.content_hash and meta.content_hash != ours):
            self._remove_bad(path, meta)
            raise IntegrityError(
                f"{name}: Dropbox stored {meta.size} bytes with content_hash "
                f"{meta.content_hash}, we sent {size} bytes with {ours}; the copy was removed")
        return RemoteEntry(name=name, size=meta.size, tag=meta.content_hash, mtime=_mtime(meta))

    @staticmethod
    def _check_src_end(src: BinaryIO, name: str, size: int) -> None:
        if src.read(1):
            raise TransportError(f"{name}: the source holds more than the announced {size} "
                                 f"bytes; nothing was written to Dropbox")

    def _upload_session(self, name: str, path: str, size: int,
                        read_part: Callable[[int, int], bytes], src: BinaryIO) -> Any:
        first = read_part(self.chunk_size, 0)
        start = self._call(f"{name}: upload_session/start",
                           self.dbx.files_upload_session_start, first)
        offset = len(first)
        del first
        cursor = dbx_files.UploadSessionCursor(session_id=start.session_id, offset=offset)
        while size - offset > self.chunk_size:
            part = read_part(self.chunk_size, offset)
            self._append(name, part, cursor)
            offset += len(part)
            cursor = dbx_files.UploadSessionCursor(session_id=start.session_id, offset=offset)
        last = read_part(size - offset, offset)
        self._check_src_end(src, name, size)
        commit = dbx_files.CommitInfo(path=path, mode=dbx_files.WriteMode.add,
                                      autorename=False, mute=True)
        return self._call(f"{name}: upload_session/finish",
                          self.dbx.files_upload_session_finish, last, cursor, commit)

    def _append(self, name: str, part: bytes, cursor: Any) -> None:
        try:
            self._call(f"{name}: upload_session/append", self.dbx.files_upload_session_append_v2,
                       part, cursor)
        except dbx_exc.ApiError as e:
            raise TransportError(f"{name}: Dropbox upload session failed: "
                                 f"{_short(e.error)}; nothing was written") from None

    def _upload_error(self, name: str, e: dbx_exc.ApiError) -> NoReturn:
        """Map an upload/finish ApiError.  A conflict after an attempt whose answer was
        lost may be that attempt's own file: the caller compares the bytes (push does)."""
        err = e.error
        conflict = False
        if isinstance(err, dbx_files.UploadError) and err.is_path():
            conflict = err.get_path().reason.is_conflict()
        elif isinstance(err, dbx_files.UploadSessionFinishError):
            conflict = err.is_path() and err.get_path().is_conflict()
        if conflict:
            raise RemoteExistsError(f"{name}: already exists in Dropbox {self.jobs_path}; "
                                    f"not overwritten") from None
        if getattr(err, "is_content_hash_mismatch", lambda: False)():
            raise IntegrityError(f"{name}: Dropbox received different bytes than we sent "
                                 f"(content_hash_mismatch); nothing was written") from None
        raise TransportError(f"{name}: Dropbox upload refused: {_short(err)}") from None

    def _remove_bad(self, path: str, meta: Any) -> None:
        with contextlib.suppress(TransportError, dbx_exc.ApiError):
            self._call(f"{path}: delete", self.dbx.files_delete_v2, path, parent_rev=meta.rev)

    def delete(self, name: str) -> None:
        self.require("can_delete")
        path = self._path(name)
        try:
            self._call(f"{name}: delete", self.dbx.files_delete_v2, path)
        except dbx_exc.ApiError as e:
            err = e.error
            if err.is_path_lookup() and err.get_path_lookup().is_not_found():
                raise RemoteNotFoundError(f"{name}: not found in Dropbox "
                                          f"{self.jobs_path}") from None
            raise TransportError(f"{name}: Dropbox delete refused: {_short(err)}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.dbx.close()
