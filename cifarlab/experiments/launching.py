"""The ``accelerate launch`` options a sweep passes on (its file's ``launch:``, the command line's): only those that
say how many processes run, on which machines and devices, and at what precision, and an Accelerate config file
that says no more. The sweep itself names the program (``-m cifarlab.train``), and a trial counts as finished only
when its run is; so anything that would change what Accelerate starts is refused: ``--no_python``,
``-m/--module``, a word that is no option's value (Accelerate takes the first such word for the training script),
launchers that start it elsewhere (DeepSpeed's pdsh, mpirun, TPU pods over gcloud, SageMaker) and options that
write files (``--tee``, ``--log_dir``). Imports no torch.

The lists were read from ``accelerate launch --help`` and the config loader of Accelerate 1.1 (the lowest setup.cfg
admits) and 1.16: every option here is in both, spelt with ``_`` or ``-``, and neither abbreviates options. An
Accelerate config file's sections (``mpirun_config:``, ``deepspeed_config:``, ...) are copied onto the launcher's
own options (1.16: those not given; 1.1: all, the training script included, and ``dynamo_config:``'s too, so
``mpirun_config: {training_script: echo, module: false, no_python: true}`` ran ``echo``): a file is read and held
to the same rule."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifarlab.errors import UsageError

VALUED = ("--config_file", "--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
          "--main_process_port", "--mixed_precision", "--gpu_ids", "--dynamo_backend", "--num_cpu_threads_per_process",
          "--rdzv_backend", "--max_restarts", "--monitor_interval")
"""Options that take a value: ``--num_processes 2`` or ``--num_processes=2``."""
FLAGS = ("--multi_gpu", "--cpu", "--same_network")
"""Options that take none."""
CONFIG_FILE = "--config_file"

FILE_CHOICES = {"compute_environment": ("LOCAL_MACHINE",), "distributed_type": ("NO", "MULTI_GPU", "MULTI_CPU")}
"""An Accelerate config file's keys that pick the launcher: one of these values, or left out."""
FILE_KEYS = ("mixed_precision", "fp16", "use_cpu", "num_processes", "num_machines", "machine_rank", "gpu_ids",
             "main_process_ip", "main_process_port", "rdzv_backend", "same_network", "enable_cpu_affinity",
             "dynamo_backend", "debug", "downcast_bf16", "main_training_function")
"""Keys it may set to any value: processes, machines, devices, precision; and what ``accelerate config`` writes into
every file (debug output; two settings only TPU launches read)."""
DYNAMO_KEYS = ("dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
               "dynamo_use_regional_compilation")
"""The keys ``dynamo_config:`` may hold. Any other key of the file must be empty (null, false, [] or {})."""


def launch_list(value: Any, where: str) -> list[str]:
    """A sweep file's ``launch:``: a list of options, each item split as a shell would, then checked."""
    if not isinstance(value, list) or not all(isinstance(item, (str, int, float)) for item in value):
        raise UsageError(f"{where}: must be a list of accelerate launch options (e.g. [--num_processes 2])")
    return check_launch([word for item in value for word in shlex.split(str(item))], where)


def check_launch(words: Sequence[str], where: str) -> list[str]:
    """``words`` (accelerate launch options, split as a shell would), each checked (module docstring); refused with
    one line naming ``where`` they come from and the first word that is not allowed."""
    allowed = ", ".join((*VALUED, *FLAGS))
    index = 0
    while index < len(words):
        word = words[index]
        option, equals, value = word.partition("=")
        name = "--" + option[2:].replace("-", "_") if option.startswith("--") else option
        if name not in (*VALUED, *FLAGS):
            what = (f"{word!r} is not an accelerate launch option (accelerate would run it as the program)"
                    if not word.startswith("-") else f"{option} is not a launch option a sweep passes on")
            raise UsageError(f"{where}: {what}; the sweep runs cifarlab.train itself; allowed: {allowed}")
        if name in FLAGS and equals:
            raise UsageError(f"{where}: {option} takes no value ({word})")
        if name in VALUED and not equals:
            index += 1
            value = words[index] if index < len(words) else ""
            if value.startswith("-"):
                value = ""
        if name in VALUED and not value:
            raise UsageError(f"{where}: {option} needs a value (e.g. {option} 2 or {option}=2)")
        if name == CONFIG_FILE:
            check_config_file(value, where)
        index += 1
    return list(words)


def check_config_file(path: str, where: str) -> None:
    """An Accelerate config file (YAML, or JSON: JSON reads as YAML) that sets only what the options above may."""
    where = f"{where}: {CONFIG_FILE} {path}"
    if not Path(path).is_file():
        raise UsageError(f"{where}: no such file (a relative path is from the current directory, as accelerate "
                         f"reads it)")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # PyYAML's errors (yaml is not imported here) and OmegaConf's
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{where}: not an Accelerate config file ({reason})") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{where}: not an Accelerate config file (a mapping of its settings)")
    for name, value in loaded.items():
        key = str(name)
        if key in FILE_CHOICES and value not in FILE_CHOICES[key]:
            raise UsageError(f"{where}: {key}: {value} starts trials another way; a sweep accepts "
                             f"{' or '.join(FILE_CHOICES[key])}")
        if key == "dynamo_config" and isinstance(value, dict):
            extra = [str(inner) for inner in value if inner not in DYNAMO_KEYS]
            if extra:
                raise UsageError(f"{where}: dynamo_config: {extra[0]} is not a dynamo setting; allowed: "
                                 f"{', '.join(DYNAMO_KEYS)}")
        elif key not in (*FILE_CHOICES, *FILE_KEYS) and not _empty(value):
            raise UsageError(f"{where}: {key} is set; a sweep's launcher sets processes, machines, devices and "
                             f"precision only (allowed keys: {', '.join((*FILE_CHOICES, *FILE_KEYS, 'dynamo_config'))}"
                             f"; others only empty)")


def _empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}
