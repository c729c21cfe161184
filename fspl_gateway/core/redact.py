"""The one redaction function: what may leave the process (logs, ``Error:`` lines, the
journal, ``status``, the metrics file) passes through :func:`redact`.

It masks

* the password of a URL's userinfo (``http://user:PASSWORD@host`` →
  ``http://user:***@host``) and of an scp-style ``user:PASSWORD@host``;
* every value registered with :func:`add_secret` — the option parser registers each
  option its schema marks secret (:mod:`fspl_gateway.transports.options`), and
  transports register a password they find elsewhere (a URL's userinfo).

:func:`strip_userinfo` drops ``user:password@`` from a URL entirely (for descriptions).
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
#: Shorter values are not registered: masking them would garble ordinary text.
MIN_SECRET = 4

_lock = threading.Lock()
_secrets: set[str] = set()

_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:'\"]*):[^/@\s'\"]*@")
_SCP_USERINFO = re.compile(r"(?P<head>(?<![\w/:.-])[\w.+-]+):[^\s/@'\":]+@(?=[\w.\[-])")


def add_secret(value: object) -> None:
    """Mask ``value`` (its text) wherever it appears from now on."""
    text = str(value) if value is not None else ""
    if len(text) >= MIN_SECRET:
        with _lock:
            _secrets.add(text)


def redact(text: str) -> str:
    """``text`` with passwords and registered secrets masked."""
    if not text:
        return text
    out = _URL_USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    out = _SCP_USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", out)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in out:
            out = out.replace(s, MASK)
    return out


def strip_userinfo(url: str) -> str:
    """``url`` without ``user:password@`` (also one that does not parse)."""
    try:
        u = urlsplit(url)
        if u.username or u.password:
            host = u.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{host}:{u.port}" if u.port else host
            return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
        return url
    except ValueError:
        return re.sub(r"(//)[^/?#]*@", r"\1", url)
