"""Run the trainer and SIGKILL it inside its N-th write of the run file NAME: halfway through the bytes of a file
written by cifarlab.files (appended, or replaced whole: then under its temporary name), or, for a file a library
writes under a temporary name (safetensors), just before it is renamed into place. Proves that a kill inside any
write loses no resume. The test drives this from outside; the trainer carries no hook for it.

    python tests/kill_in_write.py NAME N TRAIN_ARGS...
    python tests/kill_in_write.py --each PLAN.json

With --each, PLAN.json lists kills ({"name", "nth", "arguments", "cwd", "log"}): this process imports the trainer
once, then forks a child for each kill, one after the other, which does what the first form does in ``cwd`` with
its output in ``log``; each child's fate is written back into PLAN.json as "signal" (9: killed) or "exit". A child
is a process of its own, killed with nothing run after the kill, as the first form's is; what it saves is an
interpreter's start-up and the imports of torch, torchvision and the trainer (seconds of 2 busy cores each), which the
forking process has done without running anything (no tensor op: no thread pool to carry across the fork).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from cifarlab import files, train


def die_inside(name: str, die_at: int) -> None:
    """From now on, SIGKILL this process inside its ``die_at``-th write of the run file ``name``."""
    seen = 0
    written: set[str] = set()  # temporary files cifarlab wrote the bytes of: their write was counted, not their publish
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
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        if ours(target):
            written.add(Path(target).name)
            if counted():
                os.write(descriptor, data[:len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        write(descriptor, data)

    def publishing_or_dying(temporary: Any, path: Any) -> None:
        if ours(path) and Path(temporary).name not in written and counted():
            os.kill(os.getpid(), signal.SIGKILL)
        publish(temporary, path)

    files._write = writing_or_dying  # type: ignore[assignment]
    files.publish = publishing_or_dying  # type: ignore[assignment]


def each(plan_file: Path) -> int:
    # What every start imports, once before the forks: torch, accelerate and the trainer; torchvision, which the
    # data sources import where they use it (it pulls in torch._dynamo: the larger part of a start's imports).
    import torchvision  # noqa: F401

    from cifarlab.run import loop  # noqa: F401

    plan = json.loads(plan_file.read_text())
    for kill in plan:
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:  # the child: its own output, then the trainer; it never returns into this loop
            code = 1
            try:
                os.chdir(kill["cwd"])
                log = os.open(kill["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                die_inside(kill["name"], kill["nth"])
                code = train.main(kill["arguments"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(child, 0)
        kill.update({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
    plan_file.write_text(json.dumps(plan))
    return 0


def main() -> int:
    if sys.argv[1] == "--each":
        return each(Path(sys.argv[2]))
    die_inside(sys.argv[1], int(sys.argv[2]))
    return train.main(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
