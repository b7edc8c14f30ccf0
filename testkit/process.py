"""What every throwaway server shares: finding its program, skipping or failing when it is
missing (fail under CI=true), its log's tail, its temp dir, and stopping leftovers at exit."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import weakref
from typing import Any, NoReturn

_SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
)


class ServerError(RuntimeError):
    """A test server could not be started or driven (the message carries its log tail)."""


# --------------------------------------------------------------------------- generic helpers


def in_ci() -> bool:
    """True when the environment variable CI says we run under continuous integration."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test, or fail it when CI=true (a missing server is an error in CI)."""
    import pytest  # imported lazily: this module is also used outside pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: a test that needs this server must not skip)")
    pytest.skip(reason)


def require_or_skip(what: str | bool | None, reason: str) -> None:
    """Skip (locally) or fail (CI=true) unless `what` is available.

    `what` is either a program name looked up on PATH plus the sbin directories, or a
    condition (truthy means available).
    """
    available = which(what) is not None if isinstance(what, str) else bool(what)
    if not available:
        skip_or_fail(reason)


def which(program: str) -> str | None:
    if os.path.isabs(program):
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program, path=_SBIN_PATH)



def tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return f"(no file {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def make_tempdir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)  # Dovecot's unprivileged processes must traverse it
    return path



# Servers a script forgot to stop are stopped at interpreter exit.
live_servers: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(live_servers):
        with contextlib.suppress(Exception):
            (getattr(server, "stop_sync", None) or server.stop)()
