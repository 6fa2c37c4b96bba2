"""Run the trainer and SIGKILL it inside its N-th write of the run file NAME: halfway through the bytes of a file
written by cifarlab.files (appended, or replaced whole: then under its temporary name), or, for a file a library
writes under a temporary name (safetensors), just before it is renamed into place. Proves that a kill inside any
write loses no resume. The test drives this from outside; the trainer carries no hook for it.

    python tests/kill_in_write.py NAME N TRAIN_ARGS...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from cifarlab import files, train


def main() -> int:
    name, die_at = sys.argv[1], int(sys.argv[2])
    seen = 0
    write, publish = files._write, files.publish

    def ours(path: Any) -> bool:
        """``path`` is NAME, or a temporary file of it (cifarlab.files names those ``.tmp-NAME.*``)."""
        base = Path(path).name
        return base == name or base.startswith(f"{files.TEMPORARY}{name}.")

    def counted() -> bool:
        nonlocal seen
        seen += 1
        return seen == die_at

    def writing_or_dying(descriptor: int, data: bytes) -> None:
        if ours(os.readlink(f"/proc/self/fd/{descriptor}")) and counted():
            os.write(descriptor, data[:len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        write(descriptor, data)

    def publishing_or_dying(temporary: Any, path: Any) -> None:
        if ours(path) and counted():
            os.kill(os.getpid(), signal.SIGKILL)
        publish(temporary, path)

    files._write = writing_or_dying  # type: ignore[assignment]
    files.publish = publishing_or_dying  # type: ignore[assignment]
    return train.main(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
