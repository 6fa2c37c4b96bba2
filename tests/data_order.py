"""Run as 2 "nodes" of 2 gloo processes on one machine (tests/test_train.py): each process notes when it enters
and leaves engine.data_first in the file named by argv[1]."""

from __future__ import annotations

import json
import sys
import time

from accelerate import Accelerator

from cifarlab.run import engine


def main() -> None:
    accelerator = Accelerator(cpu=True)
    rank, local = accelerator.process_index, accelerator.local_process_index
    with engine.data_first(accelerator):
        entered = time.time()
        time.sleep(0.5)  # the data's preparation
        left = time.time()
    with open(sys.argv[1], "a") as log:
        log.write(json.dumps({"rank": rank, "local": local, "in": entered, "out": left}) + "\n")
    engine.leave(accelerator)


if __name__ == "__main__":
    main()
