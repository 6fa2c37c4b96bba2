"""BatchNorm across process counts: ghost batch norm (model.bn_group_size) against BatchNorm2d applied group by
group, two simulated ranks against one, the start-up refusals, and the trainer on 1 process (in this one) and on 2
(launched: one launch for the module)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from cifarlab.config import ConfigError, ModelConfig, load_config
from cifarlab.errors import UsageError
from cifarlab.evaluate import evaluate_checkpoint
from cifarlab.models import MODELS, build_model
from cifarlab.models.batchnorm import GhostBatchNorm2d, RunningStatsSync, convert_ghost_batchnorm, ghost_modules
from cifarlab.run import engine

from conftest import (
    assert_same_weights,
    check,
    error_lines,
    fresh_accelerate,
    metrics,
    run_two,
    smoke,
    train_here,
    weights,
)

STATS = ("running_mean", "running_var")


def plain_and_ghost(channels: int, group: int, momentum: float | None = 0.1) -> tuple[nn.BatchNorm2d, GhostBatchNorm2d]:
    """A BatchNorm2d with non-trivial parameters and running statistics, and a ghost copy of it."""
    generator = torch.Generator().manual_seed(0)
    plain = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        for tensor in (plain.weight, plain.bias, plain.running_mean):
            tensor.copy_(torch.randn(channels, generator=generator))
        plain.running_var.uniform_(0.5, 2.0, generator=generator)
    ghost = convert_ghost_batchnorm(copy.deepcopy(plain), group)
    assert isinstance(ghost, GhostBatchNorm2d)
    return plain, ghost


def group_by_group(plain: nn.BatchNorm2d, images: torch.Tensor,
                   group: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[nn.BatchNorm2d]]:
    """What ghost batch norm promises: BatchNorm2d on each group (a copy each), the outputs in order, the
    running statistics averaged over the groups' copies; and the copies (for their gradients)."""
    copies = [copy.deepcopy(plain) for _ in images.split(group)]
    output = torch.cat([bn(chunk) for bn, chunk in zip(copies, images.split(group))])
    return output, {key: torch.stack([getattr(bn, key) for bn in copies]).mean(0) for key in STATS}, copies


@pytest.mark.unit
@pytest.mark.parametrize("size, group", [(24, 8), (24, 6), (20, 8), (8, 8), (5, 8)],
                         ids=["3 groups", "4 groups", "2 groups and a remainder of 4", "one group", "under a group"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_ghost_batchnorm_is_batchnorm2d_group_by_group(size: int, group: int, momentum: float | None) -> None:
    plain, ghost = plain_and_ghost(6, group, momentum)
    plain.num_batches_tracked.fill_(3)  # the cumulative average weighs a batch by 1 / batches counted
    ghost.num_batches_tracked.fill_(3)
    images = torch.randn(size, 6, 5, 5, generator=torch.Generator().manual_seed(1)) * 3 + 1
    mine, theirs = images.clone().requires_grad_(), images.clone().requires_grad_()
    output = ghost(mine)
    expected, stats, copies = group_by_group(plain, theirs, group)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    for key in STATS:
        torch.testing.assert_close(getattr(ghost, key), stats[key], rtol=1e-6, atol=1e-7)
    assert int(ghost.num_batches_tracked) == 4  # one forward, one batch counted, as BatchNorm2d
    # The backward is BatchNorm2d's group by group too (the weight and bias gradients summed over groups).
    upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
    (output * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert mine.grad is not None and theirs.grad is not None
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6)
    for key in ("weight", "bias"):
        summed = torch.stack([getattr(bn, key).grad for bn in copies]).sum(0)
        torch.testing.assert_close(getattr(ghost, key).grad, summed, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.unit
def test_ghost_batchnorm_evaluates_with_running_statistics_and_keeps_channels_last() -> None:
    plain, ghost = plain_and_ghost(4, 2)
    images = torch.randn(8, 4, 3, 3)
    assert torch.equal(ghost.eval()(images), plain.eval()(images))
    ghost.train()
    last = images.contiguous(memory_format=torch.channels_last)
    output = ghost(last)
    assert output.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(output, group_by_group(plain.train(), images, 2)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["convnet_bn", "resnet18", "fastnet"])
def test_ghost_models_keep_batchnorm2d_keys_and_load_plain_weights(name: str) -> None:
    plain = build_model(ModelConfig(name=name), 10)
    ghost = build_model(ModelConfig(name=name, bn_group_size=4), 10)
    batchnorms = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and len(ghost_modules(ghost)) == len(batchnorms)
    assert all(isinstance(m, nn.BatchNorm2d) for m in ghost_modules(ghost))
    assert list(ghost.state_dict()) == list(plain.state_dict())
    # Frozen BatchNorm scales (fastnet) stay frozen: the ghost layers hold the same parameter objects.
    assert [p.requires_grad for p in ghost.parameters()] == [p.requires_grad for p in plain.parameters()]
    ghost.load_state_dict(plain.state_dict())  # an old checkpoint loads, and gives the same model in eval mode
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ghost.eval()(images), plain.eval()(images), rtol=0, atol=0)


@pytest.mark.unit
def test_the_models_without_batchnorm_are_the_ones_config_refuses_options_for() -> None:
    without = {name for name, cls in MODELS.items()
               if not any(isinstance(m, nn.BatchNorm2d) for m in cls(num_classes=10).modules())}
    assert without == set(ModelConfig._WITHOUT_BATCHNORM) == {"lenet"}


def train_on_two_ranks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
                       accumulate: int) -> list[nn.Module]:
    """Train ``model`` for ``steps`` SGD steps of ``accumulate`` batches each and, from the same start, two
    simulated ranks in-process as DDP would: each rank's forwards and backwards on its contiguous share of each
    batch (split_batches), the mean of their gradients, the same optimizer step on each, then the
    running-statistics sync (each rank's flat tensor, their mean handed back). Returns the ranks."""
    ranks = [copy.deepcopy(model) for _ in range(2)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, *ranks)]
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        for batch, targets in zip(images.chunk(accumulate), labels.chunk(accumulate)):
            loss_fn(model(batch), targets).backward()
            for rank, share, share_targets in zip(ranks, batch.chunk(2), targets.chunk(2)):
                loss_fn(rank(share), share_targets).backward()
        for parameters in zip(*(rank.parameters() for rank in ranks)):
            mean = torch.stack([p.grad for p in parameters if p.grad is not None]).mean(0)
            for parameter in parameters:
                parameter.grad = mean.clone()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
        sync_running_stats(ranks)
    return ranks


def sync_running_stats(ranks: list[nn.Module]) -> None:
    """RunningStatsSync on in-process ranks: each rank's flat tensor is collected, then their mean handed back."""
    sent: list[torch.Tensor] = []

    def send(flat: torch.Tensor) -> torch.Tensor:
        sent.append(flat.clone())
        return flat

    for rank in ranks:
        RunningStatsSync(ghost_modules(rank), send)()
    mean = torch.stack(sent).mean(0)
    for rank in ranks:
        RunningStatsSync(ghost_modules(rank), lambda flat: mean)()


@pytest.mark.unit
@pytest.mark.parametrize("accumulate", [1, 2], ids=["one batch a step", "two accumulated batches a step"])
def test_two_ranks_train_the_one_process_model_exactly_in_float64(accumulate: int) -> None:
    # In float64 the rounding that float32 training amplifies (see the CLI tests below) is gone: what is left
    # is the algorithm, which must give the 1-process model.
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="convnet_bn", bn_group_size=4), 10).double()
    images = torch.randn(16 * accumulate, 3, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 10, (16 * accumulate,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny float64 convolutions: a second thread only spins (20x slower on a busy machine)
    try:
        ranks = train_on_two_ranks(model, images, labels, steps=3, accumulate=accumulate)
    finally:
        torch.set_num_threads(threads)
    for rank in ranks:
        for key, expected in model.state_dict().items():
            torch.testing.assert_close(rank.state_dict()[key], expected, rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.unit
def test_ema_averages_ghost_running_statistics() -> None:
    model = build_model(ModelConfig(name="convnet_bn", bn_group_size=4), 10)
    ema = engine.build_ema(model, 0.5, torch.device("cpu"))
    model(torch.randn(8, 3, 8, 8))
    ema.update_parameters(model)  # the first update copies
    before = ghost_modules(ema.module)[0].running_mean.clone()
    model(torch.randn(8, 3, 8, 8) + 2)
    ema.update_parameters(model)
    torch.testing.assert_close(ghost_modules(ema.module)[0].running_mean,
                               0.5 * before + 0.5 * ghost_modules(model)[0].running_mean)


@pytest.mark.unit
def test_sync_bn_converts_and_runs_as_batchnorm_on_one_process() -> None:
    plain = build_model(ModelConfig(name="convnet_bn"), 10)
    synced = build_model(ModelConfig(name="convnet_bn", sync_bn=True), 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in synced.modules())
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 5
    assert list(synced.state_dict()) == list(plain.state_dict())
    synced.load_state_dict(plain.state_dict())
    images = torch.randn(4, 3, 16, 16)
    assert torch.equal(synced(images), plain(images))  # training mode, no process group: BatchNorm2d


@pytest.mark.unit
@pytest.mark.parametrize("overrides, expected", [
    (["model.name=convnet_bn", "model.bn_group_size=0"], "model.bn_group_size=0 must be >= 1 or null (off)"),
    (["model.name=convnet_bn", "model.bn_group_size=8", "model.sync_bn=true"],
     "model.bn_group_size=8 and model.sync_bn=true exclude each other (groups or the whole batch); set "
     "model.bn_group_size=null or model.sync_bn=false"),
    (["model.bn_group_size=8"], "model.bn_group_size=8 does nothing: model.name=lenet has no BatchNorm layers; "
                                "set model.bn_group_size=null or pick a model with BatchNorm (convnet_bn, resnet18, "
                                "fastnet)"),
    (["model.sync_bn=true"], "model.sync_bn=true does nothing: model.name=lenet has no BatchNorm layers; set "
                             "model.sync_bn=false or pick a model with BatchNorm (convnet_bn, resnet18, fastnet)"),
])
def test_config_refuses_batchnorm_options_that_cannot_work(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides)
    assert str(raised.value) == expected


@pytest.mark.unit
def test_start_up_refuses_groups_split_across_processes_and_sync_bn_without_cuda() -> None:
    ghost = ModelConfig(name="resnet18", bn_group_size=12)
    engine.check_batchnorm(ghost, 48, 2, "cpu")  # 24 per process: 2 groups each
    with pytest.raises(UsageError) as raised:
        engine.check_batchnorm(ghost, 32, 2, "cpu")
    assert str(raised.value) == ("model.bn_group_size=12 must divide each process's share of the batch "
                                 "(train.batch_size=32 over 2 process(es): 16); use a model.bn_group_size that "
                                 "divides 16 or a train.batch_size that is a multiple of 24")
    synced = ModelConfig(name="resnet18", sync_bn=True)
    engine.check_batchnorm(synced, 32, 1, "cpu")
    engine.check_batchnorm(synced, 32, 2, "cuda")
    with pytest.raises(UsageError) as raised:
        engine.check_batchnorm(synced, 32, 2, "cpu")
    assert str(raised.value) == ("model.sync_bn=true needs CUDA GPUs with several processes (torch's SyncBatchNorm "
                                 "does not train on cpu); for the same numbers on 1 and 2 processes use "
                                 "model.bn_group_size (e.g. 16) instead, or set model.sync_bn=false")


@pytest.mark.unit
def test_the_accelerator_turns_off_ddp_buffer_broadcast_and_checks_the_group_size(tmp_path: Path) -> None:
    base = ["data.name=fake", f"train.output_dir={tmp_path}", "model.name=convnet_bn", "logging.wandb.mode=disabled"]
    ghost = engine.build_accelerator(load_config(None, [*base, "model.bn_group_size=32"]))
    assert ghost.ddp_handler is not None and ghost.ddp_handler.to_kwargs() == {"broadcast_buffers": False}
    fresh_accelerate()
    assert engine.build_accelerator(load_config(None, base)).ddp_handler is None
    fresh_accelerate()
    with pytest.raises(UsageError, match=r"^model.bn_group_size=12 must divide each process's share of the batch "
                                         r"\(train.batch_size=16 over 1 process\(es\): 16\)"):
        engine.build_accelerator(load_config(None, [*base, "model.bn_group_size=12", "train.batch_size=16"]))


# --- the real CLI on 1 and 2 processes -------------------------------------------------------------------

# 72 fake images in global batches of 16: 4 steps per epoch, the last 8 images dropped (the loaders drop a
# partial training batch, so every step's batch holds whole groups on every process). optim.lr=0.01: on
# random-noise images BatchNorm over groups of 4 meets steps whose float32 gradient is good to only ~1e-3 of its
# largest entry (checked against float64: any two float32 runs, even two 1-process loops, part there by ~1e-6
# absolute); these settings have none, so what is compared is the algorithm (exact in float64: unit test above).
CONVNET = ("model.name=convnet_bn", "data.loader=tensor", "data.train_size=72", "data.test_size=32",
           "train.batch_size=16", "train.eval_batch_size=16", "optim.lr=0.01", "train.ema=0.9",
           "checkpoint.every_n_steps=3", "checkpoint.keep_last=100")
# ResNet-18 at 16x16 to stay fast; 2 batches accumulated per optimizer step (the epoch's third batch is a step
# of its own: Accelerate steps at the end of the loader).
RESNET = ("model.name=resnet18", "data.loader=tensor", "data.image_size=16", "data.train_size=48",
          "data.test_size=16", "train.batch_size=16", "train.eval_batch_size=16", "optim.lr=0.01", "train.epochs=1",
          "train.grad_accum_steps=2", "checkpoint.every_n_steps=2")


def differences(a: Path, b: Path) -> dict[str, float]:
    """The largest difference between two weight files' tensors, relative to the tensor's largest magnitude, over
    the parameters ("weights") and over the running statistics ("stats"); and the largest absolute differences
    ("weights_abs", "stats_abs"). Batch counts must be equal."""
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    found = dict.fromkeys(("weights", "stats", "weights_abs", "stats_abs"), 0.0)
    for key, value in first.items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, second[key]), key
            continue
        difference = float((value - second[key]).abs().max())
        kind = "stats" if key.endswith(STATS) else "weights"
        found[kind] = max(found[kind], difference / max(float(second[key].abs().max()), 1e-12))
        found[f"{kind}_abs"] = max(found[f"{kind}_abs"], difference)
    return found


GHOST = ("model.bn_group_size=4",)
RESUME_AFTER_FIRST_STEP = "checkpoints/step_00000002"  # RESNET: batch 2 of 3, after the first optimizer step
SYNCED_OUTPUT = "refused"  # the sync_bn run's train.output_dir, which it must not create


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    """Every 2-process run of this module, in one launch (conftest.run_two: a launcher and two interpreters start
    once, not seven times): convnet_bn and resnet18, with and without groups; the resnet18 run with groups resumed on
    2 processes after its first optimizer step; model.sync_bn on 2 CPU processes (refused); tests/ema_ranks.py.
    Their folder (runs under ``runs/``) and each one's outcome by name."""
    root = tmp_path_factory.mktemp("two")
    resume = f"train.resume={root / 'runs' / 'resnet-ghost-2' / RESUME_AFTER_FIRST_STEP}"
    named = {"convnet-ghost-2": smoke(root, "convnet-ghost-2", *CONVNET, *GHOST),
             "convnet-plain-2": smoke(root, "convnet-plain-2", *CONVNET),
             "resnet-ghost-2": smoke(root, "resnet-ghost-2", *RESNET, *GHOST),
             "resnet-resumed-2": smoke(root, "resnet-resumed-2", *RESNET, *GHOST, resume),
             "resnet-plain-2": smoke(root, "resnet-plain-2", *RESNET),
             "synced-2": smoke(root / SYNCED_OUTPUT, "synced", *CONVNET, "model.sync_bn=true"),
             # Last: the script asserts, and a failed assertion ends the launch.
             "ema-ranks": [str(Path(__file__).with_name("ema_ranks.py"))]}
    outcomes = run_two(root, *named.values())
    return root, dict(zip(named, outcomes))


def one_and_two(tmp_path: Path, two: tuple[Path, dict[str, subprocess.CompletedProcess[str]]], name: str,
                *options: str) -> dict[str, dict[str, float]]:
    """Train ``options`` on 1 process (here) as ``name-1``, against ``name-2`` of the module's 2-process launch; the
    differences (:func:`differences`) of the final weights (the EMA where train.ema is on) and of the last
    checkpoint's model."""
    root, outcomes = two
    check(outcomes[f"{name}-2"])
    one = train_here(tmp_path, f"{name}-1", *options)
    other = root / "runs" / f"{name}-2"
    last = (one / "checkpoints" / "latest").read_text()
    assert last == (other / "checkpoints" / "latest").read_text()
    found = {"final": differences(one / "model.safetensors", other / "model.safetensors"),
             "model": differences(one / "checkpoints" / last / "model.safetensors",
                                  other / "checkpoints" / last / "model.safetensors")}
    print(f"\n{name}: 1 vs 2 processes, largest differences: {json.dumps(found)}")  # the figures (pytest -s)
    return found


def largest(found: dict[str, dict[str, float]]) -> float:
    """The largest relative difference of :func:`one_and_two`'s."""
    return max(kinds[kind] for kinds in found.values() for kind in ("weights", "stats"))


@pytest.mark.integration
def test_convnet_bn_with_groups_trains_the_same_on_one_and_two_processes_and_resumes_exactly(
        tmp_path: Path, two: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    ghost = one_and_two(tmp_path, two, "convnet-ghost", *CONVNET, *GHOST)
    assert largest(ghost) < 1e-5
    one = tmp_path / "runs" / "convnet-ghost-1"
    assert [m["step"] for m in metrics(one)] == [4, 8]  # 4 whole batches an epoch: the partial one is dropped
    # Without groups each process normalises its 8 images and rank 0's running statistics win: other numbers.
    plain = one_and_two(tmp_path, two, "convnet-plain", *CONVNET)
    assert plain["model"]["weights"] > 1e-3 and plain["model"]["stats"] > 1e-3

    # Mid-epoch 2 (step 6 of 8), resumed into a new run: bitwise the uninterrupted run, EMA included.
    mid_epoch = one / "checkpoints" / "step_00000006"
    assert json.loads((mid_epoch / "trainer_state.json").read_text())["step_in_epoch"] == 2
    resumed = train_here(tmp_path, "resumed", *CONVNET, *GHOST, f"train.resume={mid_epoch}")
    assert_same_weights(one / "model.safetensors", resumed / "model.safetensors")
    assert metrics(resumed)[-1]["test/loss"] == metrics(one)[-1]["test/loss"]

    # cifarlab.evaluate builds the run's ghost model from its config.yaml: in eval mode it is BatchNorm2d.
    fresh_accelerate()
    result = evaluate_checkpoint(str(one), None, [], None)
    final = metrics(one)[-1]
    assert (result.accuracy, result.loss) == pytest.approx((final["test/acc"], final["test/loss"]))

    # model.sync_bn on one CPU process is BatchNorm2d: the plain run's weights, bitwise.
    synced = train_here(tmp_path, "synced", *CONVNET, "model.sync_bn=true")
    assert_same_weights(tmp_path / "runs" / "convnet-plain-1" / "model.safetensors", synced / "model.safetensors")


@pytest.mark.integration
def test_resnet18_with_groups_trains_the_same_on_one_and_two_processes_with_accumulation_and_resumes(
        tmp_path: Path, two: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    assert largest(one_and_two(tmp_path, two, "resnet-ghost", *RESNET, *GHOST)) < 1e-5
    # Resumed on 2 processes after the first optimizer step (batch 2 of 3): every rank starts from the saved
    # statistics (rank 0's, which the sync made every rank's) and ends where the uninterrupted run did.
    root, outcomes = two
    assert "resumed from" in check(outcomes["resnet-resumed-2"]).stdout
    assert_same_weights(root / "runs" / "resnet-ghost-2" / "model.safetensors",
                        root / "runs" / "resnet-resumed-2" / "model.safetensors", atol=1e-6)
    plain = one_and_two(tmp_path, two, "resnet-plain", *RESNET)
    assert plain["model"]["weights"] > 1e-3 and plain["model"]["stats"] > 1e-3


@pytest.mark.integration
def test_sync_bn_on_two_cpu_processes_is_refused_in_one_line(
        two: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    root, outcomes = two
    synced = outcomes["synced-2"]
    assert synced.returncode != 0
    assert error_lines(synced.stderr) == [
        "cifarlab: error: model.sync_bn=true needs CUDA GPUs with several processes (torch's SyncBatchNorm does not "
        "train on cpu); for the same numbers on 1 and 2 processes use model.bn_group_size (e.g. 8) instead, or set "
        "model.sync_bn=false"]
    assert not (root / SYNCED_OUTPUT).exists()


@pytest.mark.integration
def test_two_ranks_evaluate_and_save_the_mean_of_their_ema_statistics(
        two: tuple[Path, dict[str, subprocess.CompletedProcess[str]]]) -> None:
    """Without ghost groups each rank's EMA averages its own running statistics; before evaluation and saves
    they become their mean over ranks (tests/ema_ranks.py, on the module's 2 gloo processes)."""
    assert "EMA statistics averaged over ranks" in check(two[1]["ema-ranks"]).stdout
