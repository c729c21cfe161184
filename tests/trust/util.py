"""Helpers for the trust tests: keys, signed and encrypted jobs as a sender makes them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fspl_gateway.core import agecrypt, jobsig
from fspl_gateway.core import minisign as ms
from fspl_gateway.gateway.pull import SyncOptions
from fspl_gateway.gateway.retry import RetryPolicy
from fspl_gateway.gateway.trust import TrustPolicy
from tests.unit.test_sync import make_job

QID = "site-b"
FAST = RetryPolicy(attempts=3, backoff=0.001, max_delay=0.01)


def job_name(i: int, tag: int = 0) -> str:
    return f"fspl-{i:08d}-{tag:04d}-4000-8000-000000000000.fspl"


def signed(key: ms.SecretKey, seq: int, tmp: Path, *, queue: str = QID,
           payload: bytes | None = None, recipients: list[str] | None = None
           ) -> tuple[bytes, bytes]:
    """(job bytes, .minisig bytes) of job ``seq`` signed by ``key`` for ``queue``."""
    plain = tmp / f"plain-{seq}-{os.urandom(4).hex()}"
    plain.write_bytes(make_job(seq, payload))
    path = plain
    if recipients:
        path = tmp / (plain.name + ".age")
        with open(plain, "rb") as src, open(path, "wb") as dst:
            agecrypt.encrypt_stream(src.fileno(), dst.fileno(), recipients)
    sig = jobsig.sign_job(path, key, queue, seq=seq)
    return path.read_bytes(), sig


def policy(*keys: ms.SecretKey, **kw: object) -> TrustPolicy:
    kw.setdefault("signature_wait", 0.0)
    return TrustPolicy([k.public_key for k in keys], QID, **kw)  # type: ignore[arg-type]


def opts(pol: TrustPolicy | None, **kw: object) -> SyncOptions:
    return SyncOptions(retry=FAST, trust=pol, progress=False, **kw)  # type: ignore[arg-type]


def age_identity(d: Path) -> tuple[str, str]:
    """(identity file, recipient) from age-keygen."""
    ident = d / "age.key"
    if not ident.exists():
        subprocess.run(["age-keygen", "-o", str(ident)], check=True, capture_output=True)
    r = subprocess.run(["age-keygen", "-y", str(ident)], check=True, capture_output=True)
    return str(ident), r.stdout.decode().strip()


def reasons(qdir: Path) -> dict[str, str]:
    """Quarantined name → its reason line."""
    qd = qdir / ".fspl-gw" / "quarantine"
    out = {}
    if not qd.exists():
        return out
    for p in qd.glob("*.reason"):
        for line in p.read_text().splitlines():
            if line.startswith("reason: "):
                out[p.name[:-len(".reason")]] = line[len("reason: "):]
    return out
