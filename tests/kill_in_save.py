"""Run the trainer and SIGKILL it in the middle of its N-th checkpoint save: after every rank has written
its files, before the manifest is sealed and the folder published. Proves that a crash mid-save loses
nothing. The test drives this from outside; the trainer carries no hook for it.

    python tests/kill_in_save.py N TRAIN_ARGS...
    accelerate launch --multi_gpu --num_processes 2 tests/kill_in_save.py N TRAIN_ARGS...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from cifarlab import train
from cifarlab.run import checkpoint


def main() -> int:
    die_at, saves = int(sys.argv[1]), 0
    seal = checkpoint._seal

    def sealing_or_dying(folder: Path, state: Any) -> None:  # runs on the main process only
        nonlocal saves
        saves += 1
        if saves == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        seal(folder, state)

    checkpoint._seal = sealing_or_dying  # type: ignore[assignment]
    return train.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
