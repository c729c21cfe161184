"""libc functions that the os module lacks (Linux), looked up once through ctypes."""

from __future__ import annotations

import sys
from typing import Any

_found: dict[str, Any] = {}


def libc_function(name: str, argtypes: list[Any], restype: Any = None) -> Any:
    """libc's ``name`` with these ctypes argument types (result: ``restype``, default
    int), or None where there is none (not Linux, or an older libc).  Looked up once:
    what a forked child calls before exec must not load anything."""
    if name not in _found:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = getattr(ctypes.CDLL(None, use_errno=True), name)
                fn.argtypes = argtypes
                fn.restype = restype if restype is not None else ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _found[name] = fn
    return _found[name]
