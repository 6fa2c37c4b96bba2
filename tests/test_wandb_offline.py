"""Round trip: log an offline W&B run, then read it back with tests/wandb_offline.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import wandb

from wandb_offline import find_run_files, read_config, read_history, read_run_id, wait_for_exit

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    service = os.environ.get("WANDB_SERVICE")
    yield
    # wandb.init leaves its wandb-core's address in the environment: a process this one starts later (a sweep
    # runner's trainer) would log through this process's service.
    if service is None:
        os.environ.pop("WANDB_SERVICE", None)


def test_round_trip_and_offline_resume(tmp_path: Path) -> None:
    config = {"a": 1, "b": {"c": 2}}
    run = wandb.init(mode="offline", dir=tmp_path, project="x", id="rt1", config=config)
    for step in range(3):
        run.log({"train/loss": 1.0 / (step + 1), "test/acc/cat": step / 10}, step=step)
    run.log({"img": wandb.Image(np.zeros((4, 4, 3), dtype=np.uint8))}, step=3)
    run.finish()
    # wandb-core writes an offline run's records when it closes the run, which it does
    # after run.finish() has returned: wait for the file's exit record before reading it.
    wait_for_exit(Path(run.settings.sync_file))

    # An offline resume never merges into the old file: it writes a new run
    # folder (same id; "-1" suffix if started within the same second).
    run = wandb.init(mode="offline", dir=tmp_path, project="x", id="rt1", resume="allow")
    run.log({"train/loss": 0.05}, step=10)
    run.finish()
    wait_for_exit(Path(run.settings.sync_file))

    first, second = find_run_files(tmp_path)
    assert first.parent != second.parent
    assert read_run_id(first) == read_run_id(second) == "rt1"
    assert read_config(first) == config

    rows = read_history(first)
    assert [row["_step"] for row in rows] == [0, 1, 2, 3]
    assert [row["test/acc/cat"] for row in rows[:3]] == [0.0, 0.1, 0.2]
    assert rows[2]["train/loss"] == pytest.approx(1 / 3)
    assert rows[3]["img"]["_type"] == "image-file"  # type: ignore[index]
    assert "test/acc/cat" not in rows[3]

    rows = read_history(second)
    assert [(row["_step"], row["train/loss"]) for row in rows] == [(10, 0.05)]
