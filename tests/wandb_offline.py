"""Minimal reader for W&B *offline* run files (``run-*.wandb``).

wandb ships no Python reader for these files and an offline run writes no
``wandb-summary.json``, so tests that check what a training run logged read the
binary log directly.

File layout: a 7-byte header (``b":W&B"``, uint16 magic ``0xBEE1``, uint8
version) followed by the LevelDB log format.  The file is cut into 32 KiB
blocks (the file header counts towards the first one); each block holds
records with a 7-byte header (crc32 uint32, length uint16, type uint8:
1 full, 2 first, 3 middle, 4 last).  A block tail shorter than 7 bytes is
zero padding.  Every assembled payload is a serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The shim re-exports the protobuf-version-specific module via `import *`.
from wandb.proto.wandb_internal_pb2 import Record  # type: ignore[attr-defined]

__all__ = [
    "Record",
    "find_run_files",
    "read_records",
    "read_history",
    "read_run_id",
    "read_config",
    "read_summary",
    "read_metric_definitions",
]

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32, length, type
_BLOCK_SIZE = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_run_files(root: Path) -> list[Path]:
    """Return every ``run-*.wandb`` file below ``root``, sorted by path."""
    return sorted(Path(root).rglob("run-*.wandb"))


def _payloads(data: bytes) -> Iterator[bytes]:
    """Yield the reassembled payloads of the LevelDB log in ``data``."""
    pos, parts = _FILE_HEADER.size, list[bytes]()
    while pos + _RECORD_HEADER.size <= len(data):
        if _BLOCK_SIZE - pos % _BLOCK_SIZE < _RECORD_HEADER.size:
            pos += _BLOCK_SIZE - pos % _BLOCK_SIZE  # skip block-tail padding
            continue
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        pos += _RECORD_HEADER.size
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue  # zero-filled padding
        if len(chunk) != length:
            break  # the writer was killed mid-record: what came before is complete
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"corrupt record at byte {pos - length - _RECORD_HEADER.size}")
        if kind in (_FULL, _FIRST):
            parts = [chunk]
        elif kind in (_MIDDLE, _LAST) and parts:
            parts.append(chunk)
        else:
            raise ValueError(f"unexpected record type {kind}")
        if kind in (_FULL, _LAST):
            yield b"".join(parts)
            parts = []


def read_records(path: Path) -> Iterator[Record]:
    """Yield every ``Record`` stored in the offline run file at ``path``."""
    data = Path(path).read_bytes()
    ident, magic, _version = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file")
    for payload in _payloads(data):
        record = Record()
        record.ParseFromString(payload)
        yield record


def _path(item: Any) -> list[str]:
    """Return an item's key path: its ``nested_key`` list, else ``[key]``."""
    return list(item.nested_key) or [item.key]


def _insert(row: dict[str, Any], path: list[str], value: object) -> None:
    """Set ``row[path[0]][path[1]]... = value``, creating nested dicts on the way."""
    *parents, last = path
    for name in parents:
        row = row.setdefault(name, {})
    row[last] = value


def read_history(path: Path) -> list[dict[str, object]]:
    """Return one dict per logged history row, in file order, values json-decoded.

    Rows include wandb's ``_step``, ``_runtime`` and ``_timestamp``.  A key
    logged with slashes (``"test/acc/cat"``) stays one flat key.  Values that
    wandb splits into a ``nested_key`` path -- logged dicts and media such as
    ``wandb.Image``/``Histogram``/``Table`` -- are rebuilt as nested dicts, so
    ``row["img"]["_type"] == "image-file"``.
    """
    rows: list[dict[str, object]] = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _insert(row, _path(item), json.loads(item.value_json))
            rows.append(row)
    return rows


def read_run_id(path: Path) -> str:
    """Return the run id from the file's run record."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return str(record.run.run_id)
    raise ValueError(f"no run record in {path}")


def read_config(path: Path) -> dict[str, object]:
    """Return the final run config, values json-decoded, without wandb's ``_wandb`` entry.

    Starts from the run record's config and applies later ``run.config.update``
    records.  wandb 0.31 stores plain values in these records (the
    ``{"value": ...}`` wrapper is a ``config.yaml`` thing), so nothing is
    unwrapped and a user value like ``{"value": 0.1}`` survives intact.
    """
    config: dict[str, Any] = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            update = record.run.config if kind == "run" else record.config
            for item in update.update:
                _insert(config, _path(item), json.loads(item.value_json))
            for item in update.remove:
                *parents, last = _path(item)
                target = config
                for name in parents:
                    target = target.get(name, {})
                target.pop(last, None)
    config.pop("_wandb", None)
    return config


def read_summary(path: Path) -> dict[str, object]:
    """The run summary as last updated in the file (wandb.run.summary), values json-decoded."""
    summary: dict[str, Any] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                _insert(summary, _path(item), json.loads(item.value_json))
    return summary


def read_metric_definitions(path: Path) -> dict[str, str]:
    """``define_metric`` calls: metric name (or glob) -> its step metric ('' when none)."""
    defined: dict[str, str] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "metric":
            defined[record.metric.name or record.metric.glob_name] = record.metric.step_metric
    return defined
