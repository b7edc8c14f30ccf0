"""A small filesystem the tests can fill: a tmpfs mount (as root), so "disk full" is real."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from testkit.process import skip_or_fail


class SmallDisk:
    """A mounted tmpfs of a few MiB; fill() takes every free byte, free() gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 512, 1):  # big chunks, then the last partial blocks
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    @property
    def is_full(self) -> bool:
        stat = os.statvfs(self.path)
        return stat.f_bavail == 0


@contextlib.contextmanager
def small_disk(size_mib: int = 4) -> Iterator[SmallDisk]:
    path = Path(tempfile.mkdtemp(prefix="capbot-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        path.rmdir()
        skip_or_fail(f"cannot mount a tmpfs to fill ({done.stderr.strip()}); run as root")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.rmdir()
