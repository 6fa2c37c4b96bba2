"""Read W&B *offline* run files (``run-*.wandb``) through wandb's own reader, ``wandb leet inspect``.

``wandb leet inspect --json FILE`` prints one JSON object per record
(``{"num": 2, "type": "run", "run": {...}}``, ``"history"``, ``"metric"``, ``"exit"``, ...);
with ``--summary`` it prints the run's final state (``run_id``, ``config``, ``summary``).
A file whose writer was killed ends mid-record: leet prints what came before and exits 0.

Two losses in leet's JSON, both absent from what cifarlab logs: history keys are
dot-joined paths (so a logged key that contains a "." comes back nested), and
non-finite floats are the strings "NaN"/"Infinity"/"-Infinity" (turned back into
floats here, so a logged *string* "NaN" comes back as a float).

wandb-core buffers an offline run's records and writes them when it closes the run,
which it does asynchronously *after* ``run.finish()`` returns: call ``wait_for_exit``
before reading a run that this process has just finished.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "find_run_files",
    "read_artifacts",
    "read_config",
    "read_history",
    "read_metric_definitions",
    "read_records",
    "read_run_id",
    "read_summary",
    "wait_for_exit",
]

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def find_run_files(root: Path) -> list[Path]:
    """Return every ``run-*.wandb`` file below ``root``, sorted by path."""
    return sorted(Path(root).rglob("run-*.wandb"))


def _leet(path: Path, *flags: str) -> str:
    """stdout of ``wandb leet inspect --json [flags] path``, cached while the file is unchanged."""
    stat = Path(path).stat()
    return _leet_cached(str(Path(path).resolve()), flags, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _leet_cached(path: str, flags: tuple[str, ...], _mtime_ns: int, _size: int) -> str:
    wandb = Path(sys.executable).with_name("wandb")
    cli = str(wandb) if wandb.is_file() else shutil.which("wandb")
    if cli is None:
        raise RuntimeError(f"no wandb CLI next to {sys.executable} or on PATH")
    done = subprocess.run([cli, "leet", "inspect", "--json", *flags, path],
                          check=False, capture_output=True, text=True, timeout=300)
    # A truncated file exits 0 ("reached the end of an incomplete .wandb file"); not a
    # W&B file exits 1; a bad checksum exits 0 but says "skipped corrupt data".
    if done.returncode != 0 or "corrupt" in done.stderr:
        raise ValueError(f"wandb leet inspect {path}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def _decode(value: Any) -> Any:
    """Turn leet's "NaN"/"Infinity"/"-Infinity" strings back into floats, at any depth."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, dict):
        return {key: _decode(item) for key, item in value.items()}
    return value


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record in the file as leet prints it: ``{"num": n, "type": kind, kind: {...}}``."""
    return [json.loads(line) for line in _leet(path).splitlines() if line.startswith("{")]


def _state(path: Path) -> dict[str, Any]:
    """leet's ``--summary`` view: the run's final config and summary, nesting and removals applied."""
    return json.loads(_leet(path, "--summary"))


def read_history(path: Path) -> list[dict[str, object]]:
    """Return one dict per logged history row, in file order, values json-decoded.

    Rows include wandb's ``_step``, ``_runtime`` and ``_timestamp``.  A key
    logged with slashes (``"test/acc/cat"``) stays one flat key.  Logged dicts
    and media (``wandb.Image``/``Histogram``/``Table``), which leet prints as
    dot-joined paths (``"img._type"``), are rebuilt as nested dicts, so
    ``row["img"]["_type"] == "image-file"``.
    """
    rows: list[dict[str, object]] = []
    for record in read_records(path):
        if record["type"] == "history":
            row: dict[str, Any] = {}
            for key, value in record["history"].get("item", {}).items():
                *parents, last = key.split(".")
                target = row
                for name in parents:
                    target = target.setdefault(name, {})
                    if not isinstance(target, dict):  # "a" and "a.b" both logged: keep "a.b" flat
                        target, last = row, key
                        break
                target[last] = _decode(value)
            rows.append(row)
    return rows


def read_artifacts(path: Path, kind: str) -> list[dict[str, Any]]:
    """The artifacts of type ``kind`` logged to the run, in order: ``name``, ``aliases``, ``metadata``
    (decoded from its JSON), and ``files`` ({path in the artifact: size})."""
    found = []
    for record in read_records(path):
        if record["type"] == "artifact" and record["artifact"]["type"] == kind:
            artifact = record["artifact"]
            found.append({"name": artifact["name"], "aliases": artifact["aliases"],
                          "metadata": json.loads(artifact.get("metadata") or "{}"),
                          "files": {entry["path"]: int(entry["size"]) for entry in artifact["manifest"]["contents"]}})
    return found


def read_run_id(path: Path) -> str:
    """Return the run id from the file's run record."""
    for record in read_records(path):
        if record["type"] == "run":
            return str(record["run"]["run_id"])
    raise ValueError(f"no run record in {path}")


def read_config(path: Path) -> dict[str, object]:
    """The final run config (init config plus later updates), without wandb's ``_wandb`` entry.

    Values are as logged: a user value like ``{"value": 0.1}`` survives intact.
    """
    config = _state(path)["config"]
    config.pop("_wandb", None)
    return config


def read_summary(path: Path) -> dict[str, object]:
    """The run summary as last updated in the file (wandb.run.summary), values json-decoded."""
    return _decode(_state(path)["summary"])


def read_metric_definitions(path: Path) -> dict[str, str]:
    """``define_metric`` calls: metric name (or glob) -> its step metric ('' when none)."""
    return {m.get("name") or m.get("glob_name", ""): m.get("step_metric", "")
            for m in (r["metric"] for r in read_records(path) if r["type"] == "metric")}


def wait_for_exit(path: Path, timeout: float = 60.0) -> None:
    """Wait until the file holds its exit record, i.e. wandb-core has written and closed it."""
    deadline = time.monotonic() + timeout
    while not any(record["type"] == "exit" for record in read_records(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout:.0f}s (the run is not finished, "
                               f"or wandb-core has not written it yet)")
        time.sleep(0.02)
