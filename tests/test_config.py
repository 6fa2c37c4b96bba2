"""Config: defaults <- file <- overrides, validation errors that name the key, presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cifarlab.config import Config, ConfigError, load_config, to_dict, to_yaml
from cifarlab.config_docs import allowed_values, field_docs, reference_markdown
from cifarlab.identity import run_changes

from conftest import CONFIGS, error_lines, in_process, run_python

pytestmark = pytest.mark.unit

PRESETS = sorted(CONFIGS.glob("*.yaml"))


def test_defaults_are_the_default_preset() -> None:
    assert to_dict(load_config()) == to_dict(load_config(str(CONFIGS / "default.yaml")))


def test_file_then_overrides(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("optim:\n  lr: 0.3\ntrain:\n  epochs: 4\n")
    config = load_config(str(preset), ["train.epochs=7", "data.train_size=100", "logging.wandb.tags=[a,b]"])
    assert config.optim.lr == 0.3  # from the file
    assert config.train.epochs == 7  # override beats file
    assert config.data.train_size == 100
    assert config.logging.wandb.tags == ["a", "b"]
    assert config.optim.momentum == 0.9  # default
    assert load_config(None, ["data.train_size=null"]).data.train_size is None


@pytest.mark.parametrize("overrides, expected", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'; keys in 'optim': name, lr, momentum"),
    (["optim.lr=fast"], "optim.lr: Value 'fast'"),
    (["data.name=imagenet"],
     "data.name: Invalid value 'imagenet', expected one of ['cifar10', 'cifar100', 'imagefolder', 'fake']"),
    (["train.mixed_precision=fp8"], "train.mixed_precision: Invalid value 'fp8'"),
    (["optim.warmup_epochs=3", "train.epochs=3"], "optim.warmup_epochs=3.0 must be less than train.epochs=3"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
    (["train.batch_size=0"], "train.batch_size=0 must be >= 1"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last=0 must be >= 1"),
    (["checkpoint.every_n_steps=3", "train.grad_accum_steps=2"],
     "checkpoint.every_n_steps=3 must be a multiple of train.grad_accum_steps=2"),
    (["bogus=1"], "unknown config key 'bogus'; keys in 'top level': data, model, optim"),
    (["optim.lr"], "override 'optim.lr' is not key=value"),
    # Shell-quoting slips: YAML that does not parse (a traceback and exit 1 before).
    (['model.name="'], "override 'model.name=\"': its value is not valid YAML (found unexpected end of stream); "
                       "check its quotes and brackets"),
    (["train.mixed_precision={a:"], "override 'train.mixed_precision={a:': its value is not valid YAML"),
    (["optim.lr=0.1", "model.bn_group_size=[1,2"], "override 'model.bn_group_size=[1,2': its value is not valid YAML"),
    (["optim.lr='0.1"], "override \"optim.lr='0.1\": its value is not valid YAML"),
])
def test_bad_values_fail_with_one_line_naming_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="--config nope.yaml: no such file"):
        load_config("nope.yaml")


@pytest.mark.parametrize("text", ["train: {epochs: 2\n", "optim:\n  lr: [0.1\n", "a: 'b\n", "\x00"])
def test_a_preset_that_is_not_yaml_is_one_line_and_exit_2(text: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    with pytest.raises(ConfigError, match=rf"^--config {preset}: not valid YAML: \S") as raised:
        load_config(str(preset))
    assert "\n" not in str(raised.value)
    refused = in_process(["--config", str(preset), "--print-config", 'model.name="'], capsys)
    assert refused.returncode == 2 and error_lines(refused.stderr) == [refused.stderr.strip()]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_load_and_start_with_their_launch_command(preset: Path) -> None:
    assert isinstance(load_config(str(preset)), Config)
    first_lines = preset.read_text().splitlines()[:4]
    assert first_lines[0].startswith("# ")
    assert any("accelerate launch" in line and f"configs/{preset.name}" in line for line in first_lines)


def test_tutorial_preset_is_the_tutorial_recipe() -> None:
    config = load_config(str(CONFIGS / "tutorial.yaml"))
    assert (config.model.name, config.train.batch_size, config.train.epochs) == ("lenet", 4, 2)
    optim = config.optim
    assert (optim.lr, optim.momentum, optim.nesterov, optim.weight_decay) == (1e-3, 0.9, False, 0.0)
    assert (config.optim.schedule, config.optim.label_smoothing, config.data.augment) == ("none", 0.0, "none")
    assert config.data.mean == config.data.std == [0.5, 0.5, 0.5]


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    config = load_config(str(CONFIGS / "resnet18.yaml"), ["train.run_name=x"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(config))
    assert yaml.safe_load(saved.read_text())["train"]["run_name"] == "x"
    assert to_dict(load_config(str(saved))) == to_dict(config)


def test_cli_print_config_and_errors(tmp_path: Path) -> None:
    shown = run_python(["--config", str(CONFIGS / "smoke.yaml"), "--print-config", "optim.lr=0.5"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["optim"]["lr"] == 0.5
    # Options and overrides may come in any order.
    mixed = run_python(["optim.lr=0.5", "--print-config", "train.epochs=3", "--config", str(CONFIGS / "smoke.yaml")],
                       tmp_path)
    assert mixed.returncode == 0, mixed.stderr
    resolved = yaml.safe_load(mixed.stdout)
    assert (resolved["optim"]["lr"], resolved["train"]["epochs"], resolved["data"]["name"]) == (0.5, 3, "fake")
    assert not (tmp_path / "runs").exists()

    bad = run_python(["optim.lrr=0.5"], tmp_path)
    assert bad.returncode == 2
    assert error_lines(bad.stderr) == [bad.stderr.strip()]
    assert "optim.lrr" in bad.stderr


def test_config_reference_doc_matches_the_schema() -> None:
    text = (CONFIGS.parent / "docs" / "config.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "\n<!-- config-reference:end -->"
    documented = text[text.index(start) + len(start):text.index(end)]
    assert documented == reference_markdown(), "docs/config.md is stale: paste `python -m cifarlab.config_docs`"
    assert all(doc for _, _, doc in field_docs()), "every config field needs a docstring"


def test_the_reference_lists_what_each_enumerated_key_allows() -> None:
    """The values the table shows are the ones the loader takes: any other is refused, naming the same list."""
    allowed = allowed_values()
    assert {"data.name", "data.augment", "data.loader", "optim.schedule", "train.tta"} <= set(allowed)
    assert allowed["train.mixed_precision"] == ["no", "fp16", "bf16", "null"]
    for key, values in allowed.items():
        with pytest.raises(ConfigError, match=r"expected one of \[(.*)\]") as raised:
            load_config(None, [f"{key}=bogus"])
        listed = str(raised.value).partition("expected one of [")[2].rstrip("]")
        assert [word.strip(" '") for word in listed.split(",")] == [v for v in values if v != "null"]


def test_yaml_no_is_the_mixed_precision_choice_no(tmp_path: Path) -> None:
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  mixed_precision: no\n")
    assert load_config(str(preset)).train.mixed_precision == "no"


def test_one_identity_rule_splits_differences_into_volatile_recorded_and_refused() -> None:
    saved = load_config(str(CONFIGS / "smoke.yaml"))
    volatile = ["train.run_name=x", "train.output_dir=/elsewhere", "train.resume=auto", "train.cpu_threads=1",
                "train.timeout_minutes=5", "data.root=/moved", "data.download=false", "data.num_workers=3",
                "logging.level=warning", "logging.wandb.tags=[a]", "checkpoint.keep_last=9",
                "checkpoint.every_n_steps=2"]
    # Evaluation, numerics and speed switches are part of the run too: they change its results.
    refused = ["train.tta=flip", "train.eval_batch_size=10", "train.target_accuracy=0.5", "train.compile=true",
               "train.deterministic=true", "train.channels_last=true", "optim.lr=0.3", "model.name=convnet_bn",
               "data.augment=none", "train.seed=1",
               "train.epochs=3"]  # smoke.yaml's cosine schedule is stretched over all epochs
    changes = run_changes(saved, load_config(str(CONFIGS / "smoke.yaml"), volatile + refused))
    assert sorted(changes.volatile) == sorted(item.split("=")[0] for item in volatile)
    assert sorted(changes.refused) == sorted(item.split("=")[0] for item in refused) and not changes.recorded
    assert changes.refused["optim.lr"] == (0.02, 0.3)

    # The explicit escape hatch records what would be refused.
    allowed = run_changes(saved, load_config(str(CONFIGS / "smoke.yaml"),
                                             ["train.tta=flip", "train.allow_changes=true"]))
    assert (allowed.recorded, allowed.refused) == ({"train.tta": ("none", "flip")}, {})
    # Except another optimizer: the checkpoint's optimizer state is SGD's.
    assert run_changes(saved, load_config(str(CONFIGS / "smoke.yaml"), ["optim.name=adamw", "train.allow_changes=true"]
                                          )).refused == {"optim.name": ("sgd", "adamw")}
    # More epochs where nothing depends on their number: recorded without it.
    flat = load_config(str(CONFIGS / "smoke.yaml"), ["optim.schedule=none"])
    longer = run_changes(flat, load_config(str(CONFIGS / "smoke.yaml"), ["optim.schedule=none", "train.epochs=4"]))
    assert (longer.recorded, longer.refused) == ({"train.epochs": (2, 4)}, {})
    # Normalisation left null is the dataset's own: writing it out is no change; another value is.
    written = load_config(str(CONFIGS / "smoke.yaml"), ["data.mean=[0.4914,0.4822,0.4465]"])
    assert run_changes(saved, written) == run_changes(written, saved) == run_changes(saved, saved)
    assert list(run_changes(saved, load_config(str(CONFIGS / "smoke.yaml"), ["data.std=[0.5,0.5,0.5]"])).refused) == [
        "data.std"]


def test_a_load_leaves_nothing_behind_for_the_next(tmp_path: Path) -> None:
    """The schema is built once per process and merged onto for every load: no load may change it for the next."""
    preset = tmp_path / "p.yaml"
    preset.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 7\n")
    changed = load_config(str(preset), ["data.train_size=64", "model.name=resnet18"])
    assert (changed.optim.lr, changed.train.epochs, changed.data.train_size) == (0.5, 7, 64)
    assert changed.model.name == "resnet18"
    assert load_config() == Config()
    assert load_config(None, ["optim.lr=0.25"]).train.epochs == Config().train.epochs


@pytest.mark.parametrize(("module", "args", "hint"), [
    ("cifarlab.train", ["--epochs", "5"], "unknown option --epochs; config keys are set as key=value: train.epochs=5"),
    ("cifarlab.train", ["--config", "x.yaml", "--batch-size=64", "--lr", "0.1"],
     "unknown options --batch-size, --lr; config keys are set as key=value: train.batch_size=64, optim.lr=0.1"),
    ("cifarlab.evaluate", ["--epochs", "5"], "train.epochs=5"),  # before its missing --checkpoint
    ("cifarlab.predict", ["--checkpoint", "runs/x", "--seed=1", "a.png"], "train.seed=1"),
    ("cifarlab.summary", ["--name", "resnet18"], "data.name=resnet18 or model.name=resnet18 or optim.name=resnet18 "
                                                 "or logging.wandb.name=resnet18"),
    ("cifarlab.sweep", ["--epochs", "5", "sweep.yaml"], "train.epochs=5"),
    ("cifarlab.sweep", ["sweep.yaml", "--num_processes", "2", "--epochs", "5"], "train.epochs=5"),
])
def test_a_config_key_given_as_an_option_is_refused_with_its_override(module: str, args: list[str], hint: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    refused = in_process(args, capsys, module)
    assert refused.returncode == 2 and error_lines(refused.stderr) == [refused.stderr.strip()]
    assert refused.stderr.strip().endswith(hint)


def test_options_a_command_knows_are_not_taken_for_config_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """Its own (abbreviated too) and, in a sweep, accelerate's (--mixed_precision is also train.mixed_precision)."""
    shown = in_process(["--conf", str(CONFIGS / "smoke.yaml"), "--print-config"], capsys)
    assert shown.returncode == 0
    other = in_process(["--foo"], capsys)
    assert other.returncode == 2 and "unrecognized arguments: --foo" in other.stderr
    sweep = in_process([str(CONFIGS / "sweeps" / "nonexistent.yaml"), "--mixed_precision", "bf16"], capsys,
                       "cifarlab.sweep")
    assert "config keys are set as" not in sweep.stderr
