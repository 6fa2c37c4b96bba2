"""One W&B run across requeues: a run stopped twice (SIGTERM, as SLURM does before a preemption or its time
limit) and resumed with ``train.resume=auto`` leaves three offline segments, one per start, under one run
id; together they hold every step the run logged exactly once, in increasing order (a resumed start never
logs a step at or below the highest one already logged: W&B would drop it, and ``wandb sync`` would
upload it twice)."""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime
from pathlib import Path

import pytest

from conftest import Background, check, in_process, records, smoke
from wandb_offline import find_run_files, read_history, read_records, read_run_id, wait_for_exit

pytestmark = pytest.mark.integration

# 512 images in batches of 32: 16 steps per epoch, 32 in all; every step logged, so every stop step is one
# the stopped segment has already logged.
OVERRIDES = ("data.train_size=512", "checkpoint.every_n_steps=4", "logging.every_n_steps=1",
             "logging.wandb.mode=offline")


def _segments(run_dir: Path) -> list[Path]:
    """The run's offline segments (``run-*.wandb``), in the order they were started."""
    files = find_run_files(run_dir / "wandb")
    for file in files:
        wait_for_exit(file)  # wandb-core may still be closing the file after its process has gone

    def started(file: Path) -> datetime:
        run = next(record["run"] for record in read_records(file) if record["type"] == "run")
        return datetime.fromisoformat(run["start_time"].replace("Z", "+00:00"))  # "...T11:04:38.614195Z"

    return sorted(files, key=started)


def _exit_code(file: Path) -> int:
    return int(next(record["exit"] for record in read_records(file) if record["type"] == "exit").get("exit_code", 0))


def test_a_run_stopped_twice_leaves_three_segments_that_log_every_step_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = [sys.executable, "-m", "cifarlab.train", *smoke(tmp_path, "requeued", *OVERRIDES)]
    stops = []
    for start, at in enumerate(("epoch 1 step 6/16", "epoch 2 step 5/16")):
        resume = ["train.resume=auto"] if start else []
        stopped = Background([*command, *resume], tmp_path, tmp_path / f"{start}.log")
        stopped.wait_for(at)
        stopped.signal(signal.SIGTERM)
        assert stopped.finish() == 75, stopped.output()[-3000:]
        stops.append(int(stopped.wait_for(r"stopped on SIGTERM at step (\d+)").group(1)))
    check(in_process([*command[3:], "train.resume=auto"], capsys))  # the last start: nothing to interrupt
    assert 6 <= stops[0] < 16 < stops[1] < 32, stops

    run_dir = tmp_path / "runs" / "requeued"
    segments = _segments(run_dir)
    assert len(segments) == 3, segments
    run_id = json.loads((run_dir / "checkpoints" / "step_00000032" / "trainer_state.json").read_text())["wandb_run_id"]
    assert [read_run_id(segment) for segment in segments] == [run_id] * 3
    assert [_exit_code(segment) for segment in segments] == [75, 75, 0]

    # Each segment's rows, in time order: every step once, increasing, across all three.
    steps = [[int(row["_step"]) for row in read_history(segment)] for segment in segments]
    logged = [step for segment in steps for step in segment]
    assert logged == sorted(set(logged)), steps
    # ... and exactly the steps the run logged: step 0 (its training images), then every step it recorded.
    assert logged == [0, *sorted({record["step"] for record in records(run_dir)})], steps
    # Each segment starts after the previous one's stop and ends at its own stop.
    assert [segment[-1] for segment in steps] == [*stops, 32], steps
    # The values are the run's own: the training loss W&B has for each step is the one in metrics.jsonl.
    losses = {record["step"]: record["train/loss"] for record in records(run_dir) if "train/loss" in record}
    rows = [row for segment in segments for row in read_history(segment) if "train/loss" in row]
    assert {int(row["_step"]): row["train/loss"] for row in rows} == losses
