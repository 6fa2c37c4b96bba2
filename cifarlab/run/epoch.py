"""One epoch of training: the batch loop, advancing the train state batch by batch. The recorder, the checkpointer,
the stop request and the loss guard each decide for themselves what to do after a batch (their own cadence)."""

from __future__ import annotations

from cifarlab.data.path import DataPath
from cifarlab.report.metrics import EpochStats
from cifarlab.run.checkpoint import Checkpointer
from cifarlab.run.engine import Learner, LossGuard
from cifarlab.run.preemption import StopRequest
from cifarlab.run.recorder import Recorder
from cifarlab.run.state import Pace, TrainState


def train_epoch(learner: Learner, data: DataPath, pace: Pace, state: TrainState, recorder: Recorder,
                checkpointer: Checkpointer, stop: StopRequest, guard: LossGuard) -> EpochStats:
    """Train on the rest of epoch ``state.epoch`` (all of it, or what a resumed run has left; ``pace``: the data's
    batches), advancing ``state`` batch by batch. The recorder, the checkpointer, the stop request and the loss guard
    each decide for themselves what to do after a batch; a stop raises :class:`cifarlab.errors.Preempted` once
    saved."""
    accelerator = learner.accelerator
    total = state.start_running_loss(accelerator.device)  # summed on the device: no sync per step
    learner.model.train()
    state.training.start()
    with recorder.epoch_bar(state):
        for images, labels in data.train_batches(state.epoch, skip=state.step_in_epoch):
            loss = learner.step(images, labels)
            state.global_step += 1
            state.step_in_epoch += 1
            guard.update(loss, state.global_step)
            guard.check(state, force=False)
            total += loss
            recorder.train_step(state, loss, learner.lr)
            checkpointer.after_step(state)  # a save reads the running sum back into the state (one sync)
            # Stop between optimizer steps, where the state is complete, all ranks at the same one; a
            # signal during the last batch is handled after the epoch-end checkpoint instead.
            if state.step_in_epoch < pace.steps_per_epoch and accelerator.sync_gradients:
                stop.stop_if_agreed(state, checkpointer, step=state.global_step)
    state.training.stop()
    guard.check(state)
    state.read_back_loss(lambda running: accelerator.reduce(running, reduction="mean"))
    # Over the whole epoch, also when it was resumed: the checkpoint carried the loss sum and the training seconds.
    seconds = state.training.read() - state.epoch_start_train_s
    batches = state.epoch_loss_batches
    return EpochStats(loss=state.epoch_loss(), batches=batches, seconds=seconds,
                      images_per_s=pace.images_per_s(batches, seconds),
                      compile_seconds=learner.compile_seconds())
