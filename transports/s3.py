"""The S3 transport (boto3): a remote queue in a bucket, jobs under ``PREFIX/jobs/``.

Location: ``BUCKET/PREFIX`` or ``s3://BUCKET/PREFIX`` (``PREFIX`` may be empty: the jobs
are then under ``jobs/`` at the bucket root).  Credentials and region come from boto3's
standard chain (environment, profiles, instance roles); the endpoint from the standard
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` variables (botocore honours them) or the
``endpoint_url`` option.

Options: :data:`OPTIONS` (parsed by :mod:`fspl_gateway.transports.options`; the README's
table is generated from it).  ``conditional_writes=false`` makes writes a racy
HEAD-then-PUT (``atomic_noclobber`` false).  One boto3 client serves all threads of one
transport; ``set_concurrency`` raises its HTTP pool to the caller's concurrency.

``delete_many`` removes up to 1,000 objects per DeleteObjects request (quiet mode: only
failures come back, each mapped like a single delete's error).

Integrity: uploads carry a SHA-256 checksum (whole object for a single PutObject, per
part for multipart, which S3 checks on receipt).  Downloads ask for the stored checksum
(``ChecksumMode=ENABLED``) and verify, while streaming, the full-object SHA-256, SHA-1,
CRC32 or (with awscrt installed) CRC32C when present; otherwise a single-part ETag (the
MD5 of the object unless SSE-KMS/SSE-C); otherwise only the size.  Composite multipart
checksums (``…-N``) cannot be checked without the part layout: size only.

Writes are verified against what the store reports, because not every store validates
``x-amz-checksum-sha256`` (s3rver and moto do not): a single PUT's ETag must be the MD5 of
the bytes sent, each part's ETag its MD5, a multipart object's ETag the MD5 of the part
MD5s plus ``-N``; a mismatch removes the new object and raises IntegrityError (the
caller's retry writes it again; push keeps the outbox copy until a write matches).
Multipart objects also carry rclone's ``md5chksum`` metadata (base64 of the whole
object's MD5) so that ``rclone check`` can verify them.

Listing tags are the ETag (the only per-object value ListObjectsV2 returns);
``write_new`` returns the same ETag so the two compare.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, Literal, NoReturn
from urllib.parse import quote, urlsplit

import boto3
import botocore.exceptions as bce
import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.response import StreamingBody
from botocore.utils import parse_timestamp

from fspl_gateway.core.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    NotSupportedError,
    RemoteExistsError,
    RemoteNotFoundError,
    TransientError,
    TransportError,
)
from fspl_gateway.core.log import get_logger
from fspl_gateway.core.redact import add_secret, redact, strip_userinfo
from fspl_gateway.transports.base import (
    Capabilities,
    RemoteEntry,
    Transport,
    check_not_more,
    listed_size,
)
from fspl_gateway.transports.options import MIB, Option, OptionSchema, OptionType

log = get_logger(__name__)

MIN_PART = 5 * MIB
MAX_PARTS = 10_000
#: Keys per DeleteObjects request (the S3 limit).
DELETE_BATCH = 1000
READ_CHUNK = 1 * MIB
#: cleanup_temporaries leaves younger multipart uploads alone (another writer's).
STALE_UPLOAD_SECONDS = 24 * 3600.0

_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "TokenRefreshRequired", "InvalidToken", "InvalidClientTokenId", "AllAccessDisabled",
    "AccountProblem", "UnrecognizedClientException", "AuthorizationHeaderMalformed",
    "InvalidSecurity", "RequestExpired", "RequestTimeTooSkewed",
}
_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "NotFound", "404", "NoSuchUpload"}
_EXISTS_CODES = {"PreconditionFailed", "412"}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests",
    "ConditionalRequestConflict", "OperationAborted", "BadDigest", "IncompleteBody",
}
_NOT_IMPLEMENTED_CODES = {"NotImplemented", "501"}


# -- options and location ------------------------------------------------------------


def _http_url(url: str) -> str | None:
    """What is wrong with an endpoint URL (never repeating a password), or None."""
    try:
        u = urlsplit(url)
        ok = u.scheme in ("http", "https") and bool(u.hostname)
        _ = u.port  # a bad port raises ValueError
    except ValueError:
        ok = False
    if not ok:
        return f"expected http(s)://HOST[:PORT], got {strip_userinfo(url)!r}"
    return None


OPTIONS = OptionSchema(
    Option("endpoint_url", OptionType.STR, check=_http_url,
           default_doc="`$AWS_ENDPOINT_URL_S3`, `$AWS_ENDPOINT_URL` (read by botocore)",
           help="S3-compatible endpoint, e.g. `http://minio:9000` (MinIO, Ceph, …)."),
    Option("region", OptionType.STR, default_doc="boto3's chain", help="Region name."),
    Option("profile", OptionType.STR, default_doc="boto3's chain",
           help="A profile of `~/.aws/config` / `~/.aws/credentials`."),
    Option("path_style", OptionType.BOOL, default=False,
           help="Path-style addressing (MinIO, Ceph, …)."),
    Option("multipart_threshold", OptionType.SIZE, default=64 * MIB,
           help="Uploads above this size are multipart."),
    Option("multipart_chunksize", OptionType.SIZE, default=16 * MIB, minimum=MIN_PART,
           help="Part size of a multipart upload (S3 parts are at least 5MiB)."),
    Option("max_attempts", OptionType.INT, default=3, minimum=1, unit="attempts",
           help="botocore's connection-level attempts per HTTP request (standard retry "
                "mode), first one included; 1 = none.  Retries of whole operations are "
                "`--retries`."),
    Option("connect_timeout", OptionType.DURATION, default=10.0, minimum=0.1,
           help="Connection timeout."),
    Option("read_timeout", OptionType.DURATION, default=60.0, minimum=0.1,
           help="Socket read timeout."),
    Option("conditional_writes", OptionType.BOOL, default=True,
           help="Create with `If-None-Match: *`, so that an existing job is never "
                "overwritten; `false` for stores that lack it (then a racy check-then-put)."),
    Option("max_pool_connections", OptionType.INT, default=10, minimum=1, unit="connections",
           help="HTTP connections kept open; raised to `--concurrency`."),
    Option("lean_get", OptionType.BOOL, default=True,
           help="Download jobs with a lean signed GET (botocore's signer, credentials and "
                "HTTP pool, without its per-call machinery); `false`: through the full "
                "boto3 call."),
)


_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


def parse_location(location: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` or ``BUCKET/PREFIX`` → (bucket, prefix without slashes)."""
    loc = (location or "").strip()
    if loc.lower().startswith("s3://"):
        loc = loc[5:]
    elif "://" in loc:
        raise ConfigError(f"s3 location {location!r}: expected s3://BUCKET/PREFIX or BUCKET/PREFIX")
    bucket, _, prefix = loc.partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(f"s3 location {location!r}: bad or missing bucket name")
    prefix = prefix.rstrip("/")
    if prefix:
        parts = prefix.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ConfigError(f"s3 location {location!r}: empty, '.' or '..' path component")
        if any(ord(c) < 32 or ord(c) == 127 for c in prefix):
            raise ConfigError(f"s3 location {location!r}: control character in prefix")
    return bucket, prefix


def _retry_after(value: object) -> float | None:
    """An HTTP Retry-After header in seconds (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _client_error_detail(e: bce.ClientError) -> str:
    err = e.response.get("Error", {}) or {}
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return f"HTTP {status} {err.get('Code') or ''}".strip()


def _date_skew(resp: Mapping[str, Any], when: float) -> float | None:
    """Store clock − local clock from a response's Date header (seconds), or None."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        from email.utils import parsedate_to_datetime

        return round(parsedate_to_datetime(str(date)).timestamp() - when, 1) + 0.0
    except (TypeError, ValueError, OverflowError):
        return None


def _one_line(s: object, limit: int = 300) -> str:
    text = redact(" ".join(str(s).split()))  # botocore's messages repeat the endpoint URL
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- checksum verification -----------------------------------------------------------------

class _Verifier:
    """Computes one digest while streaming and compares it with the stored value."""

    def __init__(self, kind: str, expected: str, update: Callable[[bytes], None],
                 final: Callable[[], str]) -> None:
        self.kind = kind
        self.expected = expected
        self.update = update
        self._final = final

    def check(self, what: str) -> None:
        got = self._final()
        if got != self.expected:
            raise IntegrityError(f"{what}: {self.kind} mismatch (stored {self.expected}, read {got})")


def _hash_verifier(kind: str, expected: str, algo: str, b64: bool) -> _Verifier:
    h = hashlib.new(algo)

    def final() -> str:
        return base64.b64encode(h.digest()).decode() if b64 else h.hexdigest()

    return _Verifier(kind, expected, h.update, final)


def _crc_verifier(kind: str, expected: str, fn: Callable[[bytes, int], int], width: int) -> _Verifier:
    state = [0]

    def update(b: bytes) -> None:
        state[0] = fn(b, state[0])

    def final() -> str:
        return base64.b64encode((state[0] & ((1 << (8 * width)) - 1)).to_bytes(width, "big")).decode()

    return _Verifier(kind, expected, update, final)


def _crt_checksums() -> Any:
    try:
        from awscrt import checksums
    except ImportError:
        return None
    return checksums


def choose_verifier(resp: Mapping[str, Any]) -> _Verifier | None:
    """The strongest check the GetObject response allows (None: size only)."""
    def full(key: str) -> str | None:
        v = resp.get(key)
        if not v or "-" in v or resp.get("ChecksumType") == "COMPOSITE":
            return None  # composite multipart checksum: needs the part layout
        return str(v)

    if v := full("ChecksumSHA256"):
        return _hash_verifier("SHA-256", v, "sha256", True)
    if v := full("ChecksumSHA1"):
        return _hash_verifier("SHA-1", v, "sha1", True)
    if v := full("ChecksumCRC32"):
        return _crc_verifier("CRC32", v, zlib.crc32, 4)
    crt = _crt_checksums()
    if crt is not None:
        if v := full("ChecksumCRC32C"):
            return _crc_verifier("CRC32C", v, crt.crc32c, 4)
        if v := full("ChecksumCRC64NVME"):
            return _crc_verifier("CRC64NVME", v, crt.crc64nvme, 8)
    etag = str(resp.get("ETag") or "").strip('"')
    sse = str(resp.get("ServerSideEncryption") or "")
    if (re.fullmatch(r"[0-9a-fA-F]{32}", etag) and not sse.startswith("aws:kms")
            and not resp.get("SSECustomerAlgorithm")):
        return _hash_verifier("MD5 (ETag)", etag.lower(), "md5", False)
    return None


# -- the lean GetObject path --------------------------------------------------------------

def _fast_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser without dateutil for the two forms S3 sends (ISO 8601
    in listings, RFC 1123 in headers); dateutil took ~0.3 ms of CPU per listed object.
    Anything else goes to botocore's own parser."""
    try:
        if isinstance(value, str):
            if value.endswith("Z") and "T" in value:
                return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
            if value.endswith(" GMT"):
                return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        pass
    return parse_timestamp(value)


#: GetObject response headers → the names of boto3's response (what choose_verifier and
#: fetch read).
_GET_FIELDS = {
    "etag": "ETag", "content-length": "ContentLength",
    "x-amz-checksum-sha256": "ChecksumSHA256", "x-amz-checksum-sha1": "ChecksumSHA1",
    "x-amz-checksum-crc32": "ChecksumCRC32", "x-amz-checksum-crc32c": "ChecksumCRC32C",
    "x-amz-checksum-crc64nvme": "ChecksumCRC64NVME", "x-amz-checksum-type": "ChecksumType",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
}


class _LeanGet:
    """GetObject of one job without botocore's per-call machinery (parameter validation,
    endpoint rules, a dozen events, the response parser: most of its CPU per small GET),
    built from botocore's own parts.  The object URL and the signing scope are learnt
    from the first GetObject the full client sends (``before-send`` event; so
    botocore's endpoint rules, addressing style and region decide them); each request
    is signed by botocore's ``S3SigV4Auth`` with the credentials of the session's chain
    (refreshed as they expire) and sent through the client's own HTTP session (its
    urllib3 pool, proxies, CA bundle and timeouts).

    Only a ``200`` is used; any other answer is left to the full client call (which maps
    errors, follows region redirects …), and after a redirect or ``400`` this path is
    switched off for the transport.  No retries here: errors are classified by
    :meth:`S3Transport._raise` and retried by the one policy (gateway/retry.py)."""

    def __init__(self, base: str, region: str, service: str, credentials: Any, http: Any,
                 user_agent: str = "") -> None:
        self.headers = {"x-amz-checksum-mode": "ENABLED"}
        if user_agent:
            self.headers["User-Agent"] = user_agent
        self.base = base
        self.region = region
        self.service = service
        self.credentials = credentials
        self.http = http

    @classmethod
    def learn(cls, request: Any, key: str, client: Any, session: Any) -> _LeanGet | None:
        """The lean path from botocore's prepared GetObject ``request`` of ``key``, or
        None where it does not apply (not plain SigV4 for ``s3``: S3 Express, SigV4a,
        anonymous …; a query string; no credentials)."""
        http = getattr(getattr(client, "_endpoint", None), "http_session", None)
        credentials = session.get_credentials()
        def header(name: str) -> str:
            v = request.headers.get(name) or b""
            return v.decode("latin-1") if isinstance(v, bytes) else str(v)

        auth = header("Authorization")
        m = re.match(r"AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request,", auth)
        quoted = quote(key, safe="/~")
        url = str(request.url)
        if (http is None or not hasattr(http, "send") or credentials is None or m is None
                or m.group(2) != "s3" or "?" in url or not url.endswith(quoted)
                or "x-amz-s3session-token" in request.headers):
            return None
        base = url[: len(url) - len(quote(key.rpartition("/")[2], safe="/~"))]
        return cls(base, m.group(1), m.group(2), credentials, http, header("User-Agent"))

    def send(self, name: str) -> Any:
        """The signed GET of ``name`` (a botocore AWSResponse, body not read yet)."""
        req = AWSRequest("GET", self.base + quote(name, safe="~"),
                         headers=dict(self.headers), stream_output=True)
        S3SigV4Auth(self.credentials.get_frozen_credentials(), self.service,
                    self.region).add_auth(req)
        return self.http.send(req.prepare())


# -- the transport -----------------------------------------------------------------------

class _Body(io.RawIOBase):
    """A GetObject body whose errors are our errors."""

    def __init__(self, body: Any, mapper: Callable[[BaseException], NoReturn]) -> None:
        self._body = body
        self._map = mapper

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        try:
            return bytes(self._body.read(None if n is None or n < 0 else n))
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._map(e)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _Window:
    """``size`` bytes of a seekable stream from its current position (for PutObject:
    botocore rewinds the body when it retries)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._start = f.tell()
        self._size = size
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        if n is None or n < 0 or n > left:
            n = left
        data = self._f.read(n) if n else b""
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        self._f.seek(self._start + self._pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._size


def _seekable(f: BinaryIO) -> bool:
    try:
        if not f.seekable():
            return False
        f.tell()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _read_exactly(src: BinaryIO, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = src.read(min(n - len(buf), 4 * MIB))
        if not chunk:
            raise TransportError(f"{what}: source ended early ({len(buf)} of {n} bytes in this part)")
        buf += chunk
    return bytes(buf)


class S3Transport(Transport):
    name = "s3"
    capabilities = Capabilities()
    options_schema = OPTIONS

    def __init__(self, location: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(location, options)
        self.bucket, self.prefix = parse_location(location)
        self.jobs_prefix = f"{self.prefix}/{self.area}/" if self.prefix else f"{self.area}/"
        self.opts = self.settings
        endpoint = self.opts['endpoint_url']
        if endpoint:
            try:
                add_secret(urlsplit(endpoint).password)
            except ValueError:
                pass
        if not self.opts['conditional_writes']:
            self.capabilities = Capabilities(atomic_noclobber=False)  # type: ignore[misc]
        self._pool_size = 0
        self._session: Any = None
        self._client = self._make_client(self.opts['max_pool_connections'])
        #: the lean GET path: None until first used, False where it does not apply
        self._lean: _LeanGet | Literal[False] | None = None if self.opts['lean_get'] else False
        self._seen = threading.local()  # .key: the job key of this thread's GetObject

    def _make_client(self, pool: int) -> Any:
        """One boto3 client (thread-safe; sessions are not, so it is made here, once)
        with an HTTP pool of ``pool`` connections."""
        config = Config(
            retries={"mode": "standard", "total_max_attempts": self.opts['max_attempts']},
            connect_timeout=self.opts['connect_timeout'],
            read_timeout=self.opts['read_timeout'],
            s3={"addressing_style": "path" if self.opts['path_style'] else "auto"},
            max_pool_connections=pool,
        )
        try:
            if self._session is None:  # one session: its loader keeps the parsed model
                core = botocore.session.get_session()
                core.get_component("response_parser_factory").set_parser_defaults(
                    timestamp_parser=_fast_timestamp)
                self._session = boto3.session.Session(botocore_session=core,
                                                      profile_name=self.opts['profile'],
                                                      region_name=self.opts['region'])
            client = self._session.client("s3", endpoint_url=self.opts['endpoint_url'],
                                          config=config)
        except bce.ProfileNotFound:
            raise ConfigError(f"s3: AWS profile {self.opts['profile']!r} not found") from None
        except (bce.BotoCoreError, ValueError) as e:
            raise ConfigError(f"s3: cannot set up the client: {_one_line(e)}") from None
        self._pool_size = pool
        client.meta.events.register("before-send.s3.GetObject", self._learn_get)
        return client

    def default_concurrency(self) -> int:
        """16: one request per job is round-trip bound (docs/benchmarks.md: 16 halved a
        1,000-job sync over a 25 ms link and was not slower on loopback)."""
        return 16

    def set_concurrency(self, n: int) -> int:
        """Grow the HTTP pool to ``n`` connections (a new client, before any thread
        uses this one) so that no thread waits for a connection."""
        if n > self._pool_size:
            old, self._client = self._client, self._make_client(n)
            if self._lean:
                self._lean = None  # set up again on the new client's HTTP session
            try:
                old.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        return n

    # -- helpers ---------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return self.jobs_prefix + name

    def _where(self, name: str | None = None) -> str:
        return f"s3://{self.bucket}/{self._key(name) if name else self.jobs_prefix}"

    def _raise(self, e: BaseException, where: str, *, conditional: bool = False) -> NoReturn:
        """Map a botocore exception to ours (one line, no secrets) and raise it."""
        if isinstance(e, bce.ClientError):
            err = e.response.get("Error", {}) or {}
            code = str(err.get("Code") or "")
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            msg = _one_line(err.get("Message") or e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-error-message", "") or "")
            detail = f"{code or status}" + (f": {msg}" if msg else "")
            if code in _EXISTS_CODES or status == 412:
                raise RemoteExistsError(f"{where}: already exists (conditional create refused)") from None
            if conditional and (code in _NOT_IMPLEMENTED_CODES or status == 501):
                raise TransportError(
                    f"{where}: this S3 store lacks conditional writes (If-None-Match: *), so it "
                    f"cannot refuse to overwrite a job ({detail}); set the s3 option "
                    f"conditional_writes=false to accept a racy check instead"
                ) from None
            if code in _AUTH_CODES or status in (401, 403):
                raise AuthError(f"{where}: access denied ({detail}); check the AWS credentials, profile and permissions") from None
            if code in _NOT_FOUND_CODES or status == 404:
                raise RemoteNotFoundError(f"{where}: not found ({detail})") from None
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
                raise TransientError(f"{where}: server error ({detail})",
                                     retry_after=_retry_after(headers.get("retry-after"))
                                     ) from None
            raise TransportError(f"{where}: {detail}") from None
        if isinstance(e, bce.NoCredentialsError | bce.PartialCredentialsError):
            raise AuthError(f"{where}: no usable AWS credentials ({_one_line(e)}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile") from None
        if isinstance(e, bce.CredentialRetrievalError | bce.UnknownCredentialError):
            raise AuthError(f"{where}: cannot get AWS credentials ({_one_line(e)})") from None
        if isinstance(e, bce.FlexibleChecksumError | bce.ChecksumError):
            raise IntegrityError(f"{where}: {_one_line(e)}") from None
        if isinstance(e, bce.SSLError):
            raise TransportError(f"{where}: TLS error ({_one_line(e)})") from None
        if isinstance(e, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError):
            raise TransientError(f"{where}: connection problem ({type(e).__name__}: {_one_line(e)})") from None
        if isinstance(e, bce.BotoCoreError):
            raise TransportError(f"{where}: {type(e).__name__}: {_one_line(e)}") from None
        raise e

    # -- the interface ---------------------------------------------------------------
    def list(self) -> Iterator[RemoteEntry]:
        where = self._where()
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.jobs_prefix, Delimiter="/"):
                for obj in page.get("Contents", []) or []:
                    name = obj["Key"][len(self.jobs_prefix):]
                    if not name:  # a "directory marker" object jobs/
                        continue
                    lm = obj.get("LastModified")
                    yield RemoteEntry(
                        name=name,
                        size=int(obj["Size"]),
                        tag=str(obj.get("ETag") or "").strip('"') or None,
                        mtime=lm.timestamp() if lm is not None else None,
                    )
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._raise(e, where)

    def _get(self, name: str) -> dict[str, Any]:
        self.check_name(name)
        self._seen.key = self._key(name) if self._lean is None else None
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(name), ChecksumMode="ENABLED")
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._raise(e, self._where(name))

    def open(self, name: str) -> BinaryIO:
        resp = self._get(name)
        where = self._where(name)

        def mapper(e: BaseException) -> NoReturn:
            self._raise(e, where)

        return io.BufferedReader(_Body(resp["Body"], mapper), READ_CHUNK)

    def _learn_get(self, request: Any, **_: Any) -> None:
        """``before-send`` hook of GetObject: the first one of a job teaches the lean
        path (see :class:`_LeanGet`).  Returns None: the request goes on unchanged."""
        key = getattr(self._seen, "key", None)
        if self._lean is None and key is not None:
            self._seen.key = None
            try:
                self._lean = _LeanGet.learn(request, key, self._client, self._session) or False
            except (bce.BotoCoreError, ValueError, AttributeError) as e:
                log.debug("%s: no lean GET path (%s)", self._where(), _one_line(e))
                self._lean = False

    def _lean_get(self, name: str) -> dict[str, Any] | None:
        """GetObject through :class:`_LeanGet`: the response as boto3 would give it
        (the fields fetch reads), or None: use the full client call."""
        lean = self._lean
        if not lean:
            return None
        self.check_name(name)
        try:
            r = lean.send(name)
        except bce.BotoCoreError as e:
            self._raise(e, self._where(name))
        if r.status_code != 200:
            try:
                r.raw.read(64 * 1024)
                r.raw.release_conn()
            except Exception:  # noqa: BLE001 - the full call asks again and reports
                r.raw.close()
            if r.status_code in (301, 307, 400):
                self._lean = False  # a region redirect or the like: botocore handles it
            return None
        h = r.headers
        resp: dict[str, Any] = {field: h[k] for k, field in _GET_FIELDS.items() if k in h}
        resp["Body"] = StreamingBody(r.raw, h.get("content-length"))
        return resp

    def fetch(self, name: str, dst: BinaryIO, entry: RemoteEntry | None = None) -> int:
        resp = self._lean_get(name) or self._get(name)
        where = self._where(name)
        body = resp["Body"]
        verifier = choose_verifier(resp)
        limit = listed_size(entry)
        n = 0
        try:
            while True:
                chunk = body.read(READ_CHUNK if limit is None
                                  else max(1, min(READ_CHUNK, limit + 1 - n)))
                if not chunk:
                    break
                if verifier is not None:
                    verifier.update(chunk)
                dst.write(chunk)
                n += len(chunk)
                check_not_more(where, n, limit)  # never accept more than listed
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._raise(e, where)
        finally:
            body.close()
        length = resp.get("ContentLength")
        if length is not None and int(length) != n:
            raise TransientError(f"{where}: connection ended after {n} of {length} bytes")
        if verifier is not None:
            verifier.check(where)
        if entry is not None and entry.size is not None and entry.size != n:
            raise IntegrityError(f"{where}: read {n} bytes, the listing said {entry.size}")
        return n

    def write_new(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        self.check_name(name)
        if size < 0:
            raise TransportError(f"{self._where(name)}: negative size {size}")
        o = self.opts
        if size <= o["multipart_threshold"] and (size <= o["multipart_chunksize"] or _seekable(src)):
            return self._put_single(name, src, size)
        return self._put_multipart(name, src, size)

    def _cond(self) -> dict[str, str]:
        return {"IfNoneMatch": "*"} if self.opts['conditional_writes'] else {}

    def _precheck_absent(self, name: str) -> None:
        """Fail early (HEAD) if ``name`` exists.  Racy: the conditional write is the real
        guard; this only avoids uploading a large file for nothing."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except bce.ClientError as e:
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status == 404:
                return
            self._raise(e, self._where(name))
        except bce.BotoCoreError as e:
            self._raise(e, self._where(name))
        raise RemoteExistsError(f"{self._where(name)}: already exists")

    def _put_single(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        where = self._where(name)
        h = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        body: Any
        if size <= self.opts['multipart_chunksize'] and not _seekable(src):
            body = _read_exactly(src, size, where)
            h.update(body)
            md5.update(body)
        else:
            win = _Window(src, size)
            got = 0
            while True:
                chunk = win.read(READ_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                md5.update(chunk)
                got += len(chunk)
            if got != size:
                raise TransportError(f"{where}: source ended early ({got} of {size} bytes)")
            win.seek(0)
            body = win
        if not self.opts['conditional_writes']:
            self._precheck_absent(name)
        try:
            resp = self._client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=body, ContentLength=size,
                ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(h.digest()).decode(),
                **self._cond(),
            )
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._raise(e, where, conditional=True)
        tag = self._verify_write(name, resp, md5.hexdigest())
        return RemoteEntry(name=name, size=size, tag=tag)

    def _verify_write(self, name: str, resp: Mapping[str, Any], expected: str) -> str | None:
        """Compare the ETag the store reports for a write with the MD5 we computed while
        sending (``expected``: a hex MD5, or ``MD5-of-part-MD5s-N`` for multipart): a
        store that does not validate ``x-amz-checksum-sha256`` (s3rver, moto) keeps what
        arrived, and a byte flipped on the way shows only here.  A mismatch removes the
        object we just created and raises IntegrityError (transient: the caller writes
        again; the local copy stays until a write matches).  An ETag that is no MD5
        (SSE-KMS, SSE-C) is not compared: such stores validate the checksum."""
        tag = str(resp.get("ETag") or "").strip('"') or None
        if tag is None or resp.get("SSECustomerAlgorithm") or \
                str(resp.get("ServerSideEncryption") or "").startswith("aws:kms") or \
                not re.fullmatch(r"[0-9a-fA-F]{32}(-[0-9]+)?", tag):
            return tag
        if tag.lower() == expected:
            return tag
        where = self._where(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
            fate = "removed it"
        except (bce.BotoCoreError, bce.ClientError) as e:
            fate = f"could NOT remove it ({_one_line(e)}): remove it by hand"
        raise IntegrityError(f"{where}: the store holds other bytes than were sent (ETag "
                             f"{tag}, sent {expected}); {fate}")

    def _put_multipart(self, name: str, src: BinaryIO, size: int) -> RemoteEntry:
        where = self._where(name)
        key = self._key(name)
        part_size = max(self.opts['multipart_chunksize'], -(-size // MAX_PARTS))
        self._precheck_absent(name)
        # rclone's metadata for the whole object's MD5 (x-amz-meta-md5chksum, base64 of the
        # digest), so `rclone check` can verify a multipart object: known only at the end
        # of a stream, so the source is read twice where it can be (seekable), else not set
        meta: dict[str, str] = {}
        if _seekable(src):
            start = src.tell()
            whole = hashlib.md5(usedforsecurity=False)
            win = _Window(src, size)
            while chunk := win.read(READ_CHUNK):
                whole.update(chunk)
            src.seek(start)
            meta["md5chksum"] = base64.b64encode(whole.digest()).decode()
        try:
            mpu = self._client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                       ChecksumAlgorithm="SHA256",
                                                       Metadata=meta)
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._raise(e, where)
        upload_id = mpu["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            part_md5s = b""
            done = 0
            number = 1
            while done < size or number == 1:
                data = _read_exactly(src, min(part_size, size - done), where)
                digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
                part_md5 = hashlib.md5(data, usedforsecurity=False).digest()
                part_md5s += part_md5
                r = self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=data, ContentLength=len(data),
                    ChecksumAlgorithm="SHA256", ChecksumSHA256=digest,
                )
                etag = str(r.get("ETag") or "").strip('"').lower()
                if re.fullmatch(r"[0-9a-f]{32}", etag) and etag != part_md5.hex():
                    raise IntegrityError(f"{where}: part {number} arrived with other bytes "
                                         f"than were sent (ETag {etag}, sent {part_md5.hex()})")
                parts.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": digest})
                done += len(data)
                number += 1
                del data
            resp = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, **self._cond(),
            )
        except BaseException as e:
            self._abort(key, upload_id)
            if isinstance(e, bce.BotoCoreError | bce.ClientError):
                self._raise(e, where, conditional=True)
            raise
        expected = f"{hashlib.md5(part_md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"
        return RemoteEntry(name=name, size=size, tag=self._verify_write(name, resp, expected))

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (bce.BotoCoreError, bce.ClientError) as e:
            log.warning("s3://%s/%s: could not abort multipart upload %s: %s",
                        self.bucket, key, upload_id, _one_line(e))

    def delete(self, name: str) -> None:
        self.check_name(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (bce.BotoCoreError, bce.ClientError) as e:
            self._raise(e, self._where(name))

    def delete_many(self, names: Sequence[str]) -> dict[str, TransportError]:
        ok, errors = self.safe_names(names)
        keys = {self._key(name): name for name in ok}
        todo = list(keys)
        for i in range(0, len(todo), DELETE_BATCH):
            chunk = todo[i:i + DELETE_BATCH]
            try:
                resp = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            except (bce.BotoCoreError, bce.ClientError) as e:
                try:
                    self._raise(e, self._where())
                except (AuthError, ConfigError):
                    raise
                except TransportError as err:
                    for k in chunk:
                        errors[keys[k]] = err
                    continue
            for failed in resp.get("Errors", []) or []:
                gone = keys.get(str(failed.get("Key")))
                if gone is None:
                    continue
                fake = bce.ClientError({"Error": {"Code": failed.get("Code"),
                                                  "Message": failed.get("Message")}},
                                       "DeleteObjects")
                try:
                    self._raise(fake, self._where(gone))
                except TransportError as mapped:
                    errors[gone] = mapped
        return errors

    def cleanup_temporaries(self, older_than: float = STALE_UPLOAD_SECONDS) -> int:
        """Abort multipart uploads under ``jobs/`` started more than ``older_than``
        seconds ago (left by interrupted writes; younger ones may be another writer's
        upload in progress)."""
        n = 0
        cutoff = time.time() - older_than
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.jobs_prefix):
                for up in page.get("Uploads", []) or []:
                    started = up.get("Initiated")
                    if started is not None and started.timestamp() > cutoff:
                        continue
                    self._abort(up["Key"], up["UploadId"])
                    n += 1
        except bce.ClientError as e:
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str((e.response.get("Error", {}) or {}).get("Code") or "")
            if status == 501 or code in _NOT_IMPLEMENTED_CODES:
                # housekeeping a store does not offer: not worth a retry
                raise NotSupportedError(f"{self._where()}: this store does not list multipart "
                                        f"uploads ({_client_error_detail(e)})") from None
            self._raise(e, self._where())
        except bce.BotoCoreError as e:
            self._raise(e, self._where())
        return n

    # -- the capability probe (gateway/probe.py, ``fspl-gw remote check``) ------------
    def probe_store(self, name: str) -> dict[str, tuple[Any, str]]:
        """What this store does beyond the transport's declaration, tried with probe
        objects under ``name`` (removed again): conditional writes, checksum validation,
        multipart listing, clock skew (``"clock skew"``: seconds or None)."""
        self.check_name(name)
        key = self._key(name)
        out: dict[str, tuple[Any, str]] = {}
        skew: float | None = None
        try:
            t0 = time.time()
            r = self._client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
            skew = _date_skew(r, (t0 + time.time()) / 2)
            try:
                self._client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
                out["conditional writes"] = (False, "If-None-Match: * was ignored (overwrote)")
            except bce.ClientError as e:
                status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if status == 412:
                    out["conditional writes"] = (True, "If-None-Match: * refused an overwrite")
                else:
                    out["conditional writes"] = (False, f"answered {_client_error_detail(e)}")
        except (bce.BotoCoreError, bce.ClientError) as e:
            out["conditional writes"] = (None, _one_line(e))
        wrong = base64.b64encode(hashlib.sha256(b"not these bytes").digest()).decode()
        try:
            self._client.put_object(Bucket=self.bucket, Key=key + ".sum", Body=b"probe",
                                    ChecksumSHA256=wrong)
            out["checksum validation"] = (False, "a PUT with a wrong x-amz-checksum-sha256 "
                                                 "was stored; writes are verified by ETag")
        except bce.ClientError as e:
            out["checksum validation"] = (True, f"a wrong x-amz-checksum-sha256 was refused "
                                                f"({_client_error_detail(e)})")
        except bce.BotoCoreError as e:
            out["checksum validation"] = (None, _one_line(e))
        for k in (key, key + ".sum"):
            try:
                self._client.delete_object(Bucket=self.bucket, Key=k)
            except (bce.BotoCoreError, bce.ClientError):
                pass
        try:
            self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.jobs_prefix,
                                                MaxUploads=1)
            out["multipart listing"] = (True, "stale uploads are cleaned up")
        except bce.ClientError as e:
            out["multipart listing"] = (False, f"{_client_error_detail(e)}; stale multipart "
                                               "uploads are not cleaned up")
        except bce.BotoCoreError as e:
            out["multipart listing"] = (None, _one_line(e))
        out["clock skew"] = (skew, "")
        return out

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        if self.opts['endpoint_url']:
            where += f" at {strip_userinfo(self.opts['endpoint_url'])}"
        return where
