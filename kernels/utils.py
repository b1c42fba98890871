"""Shared helpers for the kernels: availability checks and launch settings."""

from __future__ import annotations

import functools
import os


@functools.cache
def triton_available() -> bool:
    """Whether `triton` imports (it is an optional extra)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_enabled() -> bool:
    """Whether kernels run under the Triton CPU interpreter (`TRITON_INTERPRET=1`, read at import time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
