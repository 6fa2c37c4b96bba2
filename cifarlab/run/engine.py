"""The pieces the train loop calls: accelerator, optimizer, schedule, one training epoch, evaluation."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shlex
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, cast

import psutil
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, KwargsHandler, ProjectConfiguration
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from cifarlab.config import Config, ModelConfig, OptimConfig
from cifarlab.data.path import Batch, DataPath
from cifarlab.errors import RunFailed, UsageError
from cifarlab.models import batchnorm
from cifarlab.report import console
from cifarlab.report.metrics import EvalResult
from cifarlab.run import workarounds
from cifarlab.run.averaging import WeightAverage
from cifarlab.run.rundir import RunDir, resume_command
from cifarlab.run.state import TrainState
from cifarlab.run.tracking import wandb_mode


def build_accelerator(config: Config, trackers: bool = False) -> Accelerator:
    """The Accelerator for ``config``; ``trackers`` turns on W&B as configured (training only)."""
    train = config.train
    # Without CUDA, Accelerate only forms a process group (gloo) when told it runs on CPU; otherwise
    # `accelerate launch --multi_gpu --num_processes 2` on a CPU machine starts 2 unrelated runs.
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # Ghost batch norm averages the running statistics of all ranks itself (Learner.step); DDP's default
    # would overwrite them with rank 0's before every forward.
    ghost_bn = config.model.bn_group_size is not None
    handlers: list[KwargsHandler] = [DistributedDataParallelKwargs(broadcast_buffers=False)] if ghost_bn else []
    if ghost_bn:
        # torch 2.14 deprecates it for forward_sync_buffers=False, which Accelerate 1.15's handler cannot pass;
        # both stop the per-forward broadcast (the old one also the one at start, where ranks agree anyway).
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    if train.timeout_minutes is not None:
        handlers.append(InitProcessGroupKwargs(timeout=timedelta(minutes=train.timeout_minutes)))
    # Before the Accelerator sets the device: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when CUDA work first needs it.
    backend_switches("cpu" if multi_process_cpu or not torch.cuda.is_available() else "cuda", train.deterministic)
    accelerator = Accelerator(
        cpu=multi_process_cpu,
        # None lets `accelerate launch --mixed_precision` decide; a value in the config wins.
        mixed_precision=train.mixed_precision,
        gradient_accumulation_steps=train.grad_accum_steps,
        # train.batch_size is the global batch: the same run on 1 or N processes sees the same batches.
        # non_blocking: batches from pinned memory (pin_memory on CUDA) are copied without a host sync.
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=train.seed,
                                                  non_blocking=True),
        log_with="wandb" if trackers and wandb_mode(config.logging.wandb) else None,
        project_config=ProjectConfiguration(project_dir=train.output_dir),
        kwargs_handlers=handlers,
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UsageError("train.mixed_precision=fp16 needs a GPU (on a CPU PyTorch would silently train in fp32); "
                         "use train.mixed_precision=bf16 or no")
    if accelerator.device.type == "cpu":
        # `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, halving a 2-core laptop's
        # speed on the tensor path; DataLoader workers (torchvision path) need cores of their own.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        workers = 0 if config.data.loader == "tensor" else config.data.num_workers
        torch.set_num_threads(train.cpu_threads or max(1, cores // local_processes - workers))
    batch_size = train.batch_size
    for key, size in (("train.batch_size", batch_size), ("train.eval_batch_size", train.eval_batch_size)):
        if size % accelerator.num_processes:
            raise UsageError(f"{key}={size} is the global batch and must divide by the {accelerator.num_processes} "
                             f"processes; use a multiple of {accelerator.num_processes}")
    check_batchnorm(config.model, batch_size, accelerator.num_processes, accelerator.device.type)
    check_pairs(config.data.mixup or config.data.cutmix, batch_size, accelerator.num_processes)
    return accelerator


_LEAVE_PAUSE_S = 0.05


def leave(accelerator: Accelerator) -> None:
    """End a command that every rank finished without an error: the ranks meet at a barrier, pause, then leave the
    process group (and W&B). Not after an error: a rank that raised would never reach the barrier.

    Why: a gloo worker thread drops a finished collective after its caller has been given the result. Where that drop
    frees the last reference to tensors Python made (Accelerate's gather on gloo) it takes the GIL, and once the
    interpreter is shutting down, taking the GIL ends the thread and C++ aborts the process ("terminate called without
    an active exception", SIGABRT, after all its work: PyTorch issue 190489). Measured on 2 CPU cores, torch 2.14.1:
    a rank that left straight after its last gather aborted so in 9 of 81 two-process launches; the barrier alone
    (0 of 30), and the barrier and the pause (0 of 40), both with the GIL released, give the worker threads that
    time."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        time.sleep(_LEAVE_PAUSE_S)
    accelerator.end_training()


def check_pairs(mixing: float, batch_size: int, processes: int) -> None:
    """MixUp/CutMix mix batch positions 2k and 2k+1 (cifarlab.data.mixing): each process needs whole pairs."""
    if mixing and (batch_size // processes) % 2:
        raise UsageError(f"data.mixup and data.cutmix mix pairs of images: each process's share of "
                         f"train.batch_size={batch_size} ({batch_size // processes}) must be even; use a multiple of "
                         f"{2 * processes}")


@contextlib.contextmanager
def data_first(accelerator: Accelerator) -> Iterator[None]:
    """The order in which processes prepare the data (download, decode, cache under data.root): the main process
    alone, then the first process of every other node, then all the others. It holds whether data.root is shared
    by the nodes or local to each: with a shared folder the main process has done the one-off work and the others
    only read it; with a node-local one (e.g. $SLURM_TMPDIR) each node's first process does it for its node, and
    its other processes wait for it instead of all downloading into the same folder at once. Two barriers
    (Accelerate's main_process_first, then local_main_process_first)."""
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        yield


def backend_switches(device_type: str, deterministic: bool) -> None:
    """torch's global switches for ``train.deterministic`` on a ``device_type`` device. Deterministic: cuDNN's and
    torch's deterministic algorithms (an op without one warns and runs anyway), a fixed cuBLAS workspace (needed for
    deterministic cuBLAS; set before CUDA starts), no TF32 (float32 matmuls and convolutions in full precision),
    on any device (harmless on a CPU). Otherwise, on CUDA, cuDNN autotunes its convolutions per input shape
    (cudnn.benchmark); torch's other defaults stay as they are."""
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif device_type == "cuda":
        torch.backends.cudnn.benchmark = True


def check_batchnorm(config: ModelConfig, batch_size: int, processes: int, device_type: str) -> None:
    """Refuse BatchNorm options this launch cannot honour: ``batch_size`` is the global batch, already
    known to divide by ``processes``."""
    group, share = config.bn_group_size, batch_size // processes
    if group is not None and share % group:
        # A group split across two processes would be normalised as two groups: other numbers than 1 process.
        raise UsageError(f"model.bn_group_size={group} must divide each process's share of the batch "
                         f"(train.batch_size={batch_size} over {processes} process(es): {share}); use a "
                         f"model.bn_group_size that divides {share} or a train.batch_size that is a multiple of "
                         f"{processes * group}")
    if config.sync_bn and processes > 1 and device_type != "cuda":
        raise UsageError(f"model.sync_bn=true needs CUDA GPUs with several processes (torch's SyncBatchNorm does "
                         f"not train on {device_type}); for the same numbers on 1 and {processes} processes use "
                         f"model.bn_group_size (e.g. {math.gcd(share, 32)}) instead, or set model.sync_bn=false")


def build_optimizer(config: OptimConfig, model: nn.Module) -> Optimizer:
    """``optim.name``'s optimizer over all of ``model``'s parameters."""
    if config.name == "adamw":
        return AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
               weight_decay=config.weight_decay)


def build_scheduler(config: OptimConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int) -> LRScheduler:
    """A schedule over ``epochs * steps_per_epoch`` optimizer steps (not batches: gradient
    accumulation takes several batches per step)."""
    total = epochs * steps_per_epoch
    # At least one step when asked for any: a short warm-up must not round to none (onecycle: to its 25 %).
    warmup = max(round(config.warmup_epochs * steps_per_epoch), 1) if config.warmup_epochs else 0
    if config.schedule == "onecycle":
        # Momentum stays at optim.momentum: OneCycleLR would otherwise cycle it between 0.85 and 0.95.
        rise = warmup / total if warmup else 0.25
        # OneCycleLR divides by each phase's length in steps (the rise's less one): both need >= 1 step.
        if total < 3:
            raise UsageError(f"optim.schedule=onecycle needs at least 3 optimizer steps and this run has {total}; "
                             f"train longer (train.epochs, data.train_size) or use optim.schedule=cosine")
        rise = min(max(rise, 2 / total), (total - 1) / total)
        return OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=rise, cycle_momentum=False)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class Schedule:
    """The optimizer's hyperparameters and the schedule's state as built from the config, before a checkpoint
    replaces them with those it was saved with (see :meth:`restore`)."""

    scheduler: dict[str, Any]
    groups: list[dict[str, Any]]

    @classmethod
    def of(cls, learner: Learner) -> Schedule:
        return cls(copy.deepcopy(_bare(learner.scheduler).state_dict()),
                   [{k: v for k, v in group.items() if k != "params"} for group in learner.optimizer.param_groups])

    def restore(self, learner: Learner) -> None:
        """After resuming with changed optimizer or schedule settings (train.allow_changes): the config's
        learning rates and schedule, at the step the checkpoint reached. A checkpoint restores the schedule it
        was saved with, which a longer run would step past its end."""
        scheduler, groups = _bare(learner.scheduler), learner.optimizer.param_groups
        position, count = scheduler.last_epoch, getattr(scheduler, "_step_count", 0)
        scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        for group, settings in zip(groups, self.groups, strict=True):
            group.update(settings)
        scheduler.last_epoch, scheduler._step_count = position, count
        with warnings.catch_warnings():  # get_lr outside step() warns; here it is the point
            warnings.simplefilter("ignore")
            rates = scheduler.get_lr()
        for group, rate in zip(groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = [group["lr"] for group in groups]


def _bare(scheduler: Any) -> LRScheduler:
    """torch's scheduler inside Accelerate's wrapper."""
    bare: LRScheduler = getattr(scheduler, "scheduler", scheduler)
    return bare


def build_ema(model: nn.Module, decay: float, device: torch.device) -> WeightAverage:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics on ``device``
    (``update_parameters`` after each optimizer step; running statistics are averaged like weights, ghost batch
    norm's too, which :meth:`Learner.step` has made the same on every rank first). Built from the bare model: a
    copy made after ``accelerator.prepare`` would share the prepared model's mixed-precision forward."""
    return WeightAverage(model, decay, device)


COMPILE_BACKEND = "inductor"
"""torch.compile's backend for ``train.compile`` (tests count graphs with Dynamo's "eager" backend)."""


def compile_training_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``train.compile``: the training forward of the prepared ``model``, compiled once (static shapes: training
    batches all have one size, drop_last). Evaluation calls the model eagerly: compiling it too would add a graph
    per mode (eval, no_grad under autocast), per test-time view's strides and for the partial last test batch.

    The prepared model is compiled from the outside, DDP included (torch's guidance for DDP and torch.compile):
    Dynamo's DDPOptimizer then splits the graph at DDP's gradient buckets (one graph per bucket under DDP), so
    the all-reduce of a bucket overlaps the rest of the backward. Compiling the module inside DDP would make the
    whole backward one graph whose gradients are all ready at its end, which loses that overlap. The model itself
    is unchanged: parameter names and checkpoints stay those of the eager model."""
    return cast(Callable[[torch.Tensor], torch.Tensor], torch.compile(model, backend=COMPILE_BACKEND, dynamic=False))


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the image content by (dy, dx) pixels (|d| <= 1), filling the uncovered border with zeros
    (the mean colour of normalised images)."""
    height, width = images.shape[2:]
    padded = F.pad(images, (1, 1, 1, 1))
    return padded[:, :, 1 - dy:1 - dy + height, 1 - dx:1 - dx + width]


def tta_logits(model: nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """``model``'s logits averaged over the test-time views of ``images`` (``train.tta``): the image itself
    (none); and its mirror image (flip); and both shifted by one pixel up-left and down-right
    (flip_translate, 6 views)."""
    if tta == "none":
        return model(images)
    views = [images, images.flip(3)]
    if tta == "flip_translate":
        views += [_shift(view, d, d) for d in (-1, 1) for view in views]
    return torch.stack([model(view).float() for view in views]).mean(dim=0)


@dataclass
class Learner:
    """The prepared model and what updates it: one optimizer step per :meth:`step` (or per
    ``train.grad_accum_steps`` batches), after which ghost batch norm's running statistics are averaged across
    ranks (one all-reduce) and the EMA is updated."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    loss_fn: nn.Module
    ema: Optional[WeightAverage] = None
    grad_clip: Optional[float] = None
    memory_format: torch.memory_format = torch.contiguous_format
    train_forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    """The compiled training forward (``train.compile``, :func:`compile_training_forward`); None: the model's own."""

    def __post_init__(self) -> None:
        self._compile_seconds: Optional[float] = None
        self._compile_reported = False
        note = workarounds.apply().note()  # probes the installed Accelerate once per process
        if note:
            console.note(note)
        ghosts = batchnorm.ghost_modules(self.accelerator.unwrap_model(self.model))
        self._running_stats = (batchnorm.RunningStatsSync(ghosts, self._mean_over_ranks)
                               if ghosts and self.accelerator.num_processes > 1 else None)

    def _mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values, reduction="mean")

    def sync_average(self) -> None:
        """Before evaluating or saving the EMA on several processes: its BatchNorm statistics, averaged on each rank
        from that rank's own, become their mean over ranks (one all-reduce); ghost batch norm's are the same on
        every rank already (:meth:`step`). Call on every rank."""
        if self.ema is not None and self.accelerator.num_processes > 1 and self._running_stats is None:
            self.ema.sync_buffers(self._mean_over_ranks)

    @property
    def evaluated(self) -> nn.Module:
        """What is tested, picked as best and saved at the end: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward, backward and (at accumulation boundaries) an optimizer step; the detached loss."""
        accelerator = self.accelerator
        images = images.contiguous(memory_format=self.memory_format)
        compiling = self.train_forward is not None and self._compile_seconds is None
        started = time.perf_counter()
        forward = self.model if self.train_forward is None else self.train_forward
        with accelerator.accumulate(self.model):
            loss = self.loss_fn(forward(images), labels)
            accelerator.backward(loss)
            if self.grad_clip is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            workarounds.zero_grad(self.optimizer, accelerator)
        if accelerator.sync_gradients:  # once per optimizer step, after every rank's forwards of this step
            if self._running_stats is not None:
                self._running_stats()
            if self.ema is not None:
                self.ema.update_parameters(accelerator.unwrap_model(self.model))
        if compiling:
            # Host seconds of the first compiled step: Dynamo's tracing and the backend's compile of the forward and
            # backward graphs happen on the host, in this call; the kernels it launches are not waited for (no sync).
            self._compile_seconds = time.perf_counter() - started
        return loss.detach()

    def compile_seconds(self) -> Optional[float]:
        """``train/compile_seconds``: the host seconds of the first compiled training step of this start (compiling
        the training forward and backward, plus that step's kernel launches), once; None after, and without
        ``train.compile``."""
        if self._compile_seconds is None or self._compile_reported:
            return None
        self._compile_reported = True
        return self._compile_seconds

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tta: str) -> torch.Tensor:
        """The evaluated model's predicted labels for a batch of ``images`` (on any device), with ``tta``."""
        model = self.accelerator.unwrap_model(self.evaluated).eval()
        with self.accelerator.autocast():
            views = images.to(self.accelerator.device).contiguous(memory_format=self.memory_format)
            return tta_logits(model, views, tta).argmax(dim=1)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def evaluate(self, data: DataPath, tta: str, split: str = "test") -> EvalResult:
        """:func:`evaluate` of the evaluated model on the whole test set, or with ``split="val"`` the whole
        validation split (data.val_size)."""
        self.sync_average()
        batches = data.val_batches() if split == "val" else data.test_batches()
        return evaluate(self.evaluated, batches, self.accelerator, data.classes, tta, self.memory_format)


class LossGuard:
    """Stops the run at the first training loss that is not finite, before anything is logged or saved after it.

    Each step's loss is checked on its device (no host sync per step); :meth:`check` compares notes across
    ranks every ``every`` steps, before every checkpoint (the checkpointer's ``healthy`` hook) and at the end
    of each epoch, and raises :class:`RunFailed` naming the step and the last good checkpoint (and, given the
    ``run``, the command that resumes from it with another learning rate).
    """

    def __init__(self, accelerator: Accelerator, run_latest: Callable[[], Optional[str]], every: int,
                 run: Optional[RunDir] = None) -> None:
        self.accelerator = accelerator
        self.latest = run_latest
        self.every = every
        self.run = run
        self._first_bad = torch.full((1,), -1, dtype=torch.long, device=accelerator.device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)

    def check(self, state: TrainState, force: bool = True) -> None:
        if not force and state.global_step % self.every:
            return
        steps = self.accelerator.gather(self._first_bad) if self.accelerator.num_processes > 1 else self._first_bad
        bad = [int(step) for step in steps.tolist() if step >= 0]
        if bad:
            latest = self.latest()
            resume = "train.allow_changes=true"
            if self.run is not None and latest:
                resume = resume_command(self.run, shlex.quote(f"train.resume={latest}"), "optim.lr=<lower>", resume)
            raise RunFailed(f"the training loss is not finite (NaN or inf) at step {min(bad)}; stopped without saving "
                            f"its weights. The last good checkpoint is {latest or 'none (none saved yet)'}: lower "
                            f"optim.lr or set optim.grad_clip, and start a new run (or resume from it with "
                            f"{resume})")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], accelerator: Accelerator, classes: tuple[str, ...],
             tta: str = "none", memory_format: torch.memory_format = torch.contiguous_format) -> EvalResult:
    """Accuracy, per-class accuracy and loss over the whole test set, every image counted once.
    ``batches``: (images, labels) from a prepared loader, to its end (``DataPath.test_batches``); ``tta``
    as :func:`tta_logits`. ``model`` may be the prepared model or a bare one (an EMA): both run
    under the accelerator's mixed precision."""
    model.eval()
    outputs, labels, losses = [], [], []
    for images, targets in batches:
        with accelerator.autocast():
            logits = tta_logits(model, images.contiguous(memory_format=memory_format), tta).float()
        loss = F.cross_entropy(logits, targets, reduction="none")
        # Gathered on every batch through to the end, so the last batch's padding is dropped; global batches
        # are split in order across ranks (split_batches), so the gathered images are in dataset order.
        logits, target, loss = accelerator.gather_for_metrics((logits, targets, loss))
        outputs.append(logits.cpu())
        labels.append(target)
        losses.append(loss)
    model.train()
    logits = torch.cat(outputs)
    return EvalResult.from_predictions(logits.argmax(dim=1), torch.cat(labels), torch.cat(losses), classes, logits)
