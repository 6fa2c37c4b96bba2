"""Files that colleagues can read: everything cifarlab writes ends with the mode the user's umask gives a new
file (0644 under umask 022), also what is written under a temporary name and then renamed into place
(``tempfile.mkstemp`` and safetensors create theirs 0600, which would hide a run's weights from the other
people on a shared cluster). Nothing here imports torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets it to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


def share(path: PathLike) -> None:
    """Give ``path``, a file cifarlab wrote, the mode of a normally created file."""
    os.chmod(path, normal_mode())


def publish(temporary: PathLike, path: PathLike) -> None:
    """Move a finished ``temporary`` file to ``path`` atomically, with the mode of a normally created file."""
    share(temporary)
    os.replace(temporary, path)
