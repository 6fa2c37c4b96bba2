"""Typed configuration: schema defaults <- ``--config FILE.yaml`` <- ``key=value`` overrides, merged by OmegaConf.
The schema defaults *are* the default preset (``configs/default.yaml`` mirrors them; a test keeps the two equal).
Unknown keys, wrong types and bad choices are refused by OmegaConf; cross-field rules live in ``__post_init__`` and
name the dotted key. Every failure, YAML that does not parse included, is a :class:`ConfigError` of one line."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cifarlab.config_errors import below_a_list, not_a_mapping, one_line
from cifarlab.errors import UsageError, printable
from cifarlab.interpolation import literal, resolver_call

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck")
# Classes and per-channel training-set (mean, std) of the torchvision datasets, for what the schema knows
# without reading the data (class names and CIFAR-100's superclasses: cifarlab/data/classes.py).
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100}
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SEED_LIMIT = 2**32
"""train.seed is in [0, SEED_LIMIT): numpy's seeds are (accelerate's set_seed seeds numpy too)."""


class ConfigError(UsageError):
    """A configuration value the user has to change."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class DataConfig:
    name: Literal["cifar10", "cifar100", "imagefolder", "fake"] = "cifar10"
    """Dataset: torchvision CIFAR-10 or CIFAR-100 (100 fine classes), an image folder with train/ and test/, or synthetic FakeData."""
    num_classes: Optional[int] = None
    """fake: how many classes (null = 10; 10 get CIFAR-10's names, 100 CIFAR-100's, other counts class00, class01, ...); cifar10, cifar100, imagefolder: null, or the count the data has (checked)."""
    root: str = "data"
    """Where the dataset lives (cifar10: holds cifar-10-batches-py; cifar100: cifar-100-python; imagefolder: train/ and test/)."""
    download: bool = True
    """cifar10, cifar100: download into data.root when missing (main process first)."""
    train_size: Optional[int] = None
    """Training images to use: a fixed random subset of this size of those data.val_size leaves (fake: the dataset size, the validation images on top); null = all."""
    test_size: Optional[int] = None
    """Test images to use, as train_size (fake: the dataset size); null = all."""
    val_size: int = 0
    """Validation images held out of the training split, stratified by class (each class its share) and chosen by data.val_seed; the training set shrinks by that many, and data.train_size, where set, then takes its subset of what is left (fake: the training split grows by that many instead); 0 = no validation split."""
    val_seed: int = 0
    """Which images data.val_size holds out (0 to 2**32 - 1): its own seed, not train.seed, so every run of a comparison holds out the same images."""
    image_size: int = 32
    """fake only: height and width of the synthetic images, in pixels."""
    augment: Literal["none", "flip", "flip_crop"] = "flip"
    """Training augmentation: none, random horizontal flip, or flip + random 32px crop with 4px padding."""
    mean: Optional[list[float]] = None
    """Per-channel mean subtracted after ToTensor; null = the dataset's own (cifar100: CIFAR-100's training mean [0.5071, 0.4865, 0.4409]; others: CIFAR-10's [0.4914, 0.4822, 0.4465]). The tutorial uses 0.5."""
    std: Optional[list[float]] = None
    """Per-channel standard deviation divided out after ToTensor; null = the dataset's own (cifar100: [0.2673, 0.2564, 0.2762]; others: CIFAR-10's [0.2470, 0.2435, 0.2616]). The tutorial uses 0.5."""
    num_workers: int = 2
    """DataLoader worker processes per training process (0 = load in the training process)."""
    loader: Literal["torchvision", "tensor"] = "tensor"
    """torchvision = decode and augment each image in workers; tensor = decode once (cached), keep in memory (on the GPU when there is one), augment batches there."""
    cutout: int = 0
    """Cutout: set a random square of this side (pixels) of each training image to the mean colour (after the crop and flip); 0 = off."""
    mixup: float = 0.0
    """MixUp: blend the training images of each pair (batch positions 2k, 2k+1) and their labels by a weight drawn from Beta(this, this), e.g. 0.2-0.8; 0 = off. With data.cutmix too, a seeded coin picks one per pair."""
    cutmix: float = 0.0
    """CutMix: paste a box of each pair's other image into each (its area weighting the labels), the area drawn from Beta(this, this), e.g. 1.0; 0 = off."""

    def __post_init__(self) -> None:
        for key, size in (("train_size", self.train_size), ("test_size", self.test_size)):
            _require(size is None or size > 0, f"data.{key}={size} must be a positive integer or null (all)")
        _require(0 <= self.val_seed < SEED_LIMIT, f"data.val_seed={self.val_seed} must be from 0 to {SEED_LIMIT - 1}")
        _require(self.image_size > 0, f"data.image_size={self.image_size} must be positive")
        for key, values in (("mean", self.mean), ("std", self.std)):
            _require(values is None or len(values) == 3, f"data.{key} needs 3 values (R, G, B) or null (the dataset's own)")
        _require(self.std is None or all(s > 0 for s in self.std), f"data.std={self.std} must be positive")
        for key, value, zero in (("num_workers", self.num_workers, ""), ("cutout", self.cutout, " (0 = off)"), ("val_size", self.val_size, " (0 = no validation split)")):
            _require(value >= 0, f"data.{key}={value} must be >= 0{zero}")
        for key, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)):
            _require(alpha >= 0, f"data.{key}={alpha} must be >= 0 (0 = off)")
        _require(self.num_classes is None or self.num_classes >= 2, f"data.num_classes={self.num_classes} must be 2 or more, or null")
        known = DATASET_CLASSES.get(self.name)
        _require(self.num_classes is None or known is None or self.num_classes == known,
                 f"data.num_classes={self.num_classes} does not match data.name={self.name}, which has {known} classes; set data.num_classes={known} or null")

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) that images are normalised with: data.mean and data.std, each where null the dataset's
        own (an image folder and fake data get CIFAR-10's, as before the fields could be null)."""
        mean, std = CIFAR100_STATS if self.name == "cifar100" else CIFAR10_STATS
        return tuple(self.mean) if self.mean is not None else mean, tuple(self.std) if self.std is not None else std

    def class_count(self) -> Optional[int]:
        """Classes the data has, as far as the config tells: None for an image folder with data.num_classes
        null (its class folders say)."""
        if self.name == "fake":
            return self.num_classes or len(CIFAR10_CLASSES)
        return DATASET_CLASSES.get(self.name, self.num_classes)


@dataclass
class ModelConfig:
    # Not a field (no annotation): the models with no BatchNorm layer (tests/test_batchnorm.py checks it).
    _WITHOUT_BATCHNORM = ("lenet",)

    name: Literal["lenet", "convnet_bn", "resnet18", "fastnet"] = "lenet"
    """Network: the tutorial's LeNet-style Net, a small ConvNet with BatchNorm2d, a CIFAR ResNet-18, or fastnet (airbench94-style: a frozen 2x2 whitening stem set from training images, three conv-pool-conv blocks)."""
    bn_group_size: Optional[int] = None
    """Ghost batch norm: in training, BatchNorm normalises each run of this many consecutive samples of the global batch on its own, and running statistics are averaged over every group on every process, so 1 and N processes train the same model (each process's share of train.batch_size must be a multiple); null = each process normalises its whole share and DDP keeps rank 0's running statistics."""
    sync_bn: bool = False
    """torch's SyncBatchNorm: in training, BatchNorm normalises over the whole global batch, gathered across processes every layer; needs CUDA GPUs when there are several processes (on one process it is plain BatchNorm)."""

    def __post_init__(self) -> None:
        group = self.bn_group_size
        _require(group is None or group >= 1, f"model.bn_group_size={group} must be >= 1 or null (off)")
        _require(group is None or not self.sync_bn,
                 f"model.bn_group_size={group} and model.sync_bn=true exclude each other (groups or the whole batch); "
                 f"set model.bn_group_size=null or model.sync_bn=false")
        # An option that would silently do nothing is refused.
        if self.name in self._WITHOUT_BATCHNORM:
            chosen, off = ((f"model.bn_group_size={group}", "model.bn_group_size=null") if group is not None
                           else ("model.sync_bn=true", "model.sync_bn=false"))
            _require(group is None and not self.sync_bn,
                     f"{chosen} does nothing: model.name={self.name} has no BatchNorm layers; set {off} or pick a "
                     f"model with BatchNorm (convnet_bn, resnet18, fastnet)")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    """Optimizer: sgd (with optim.momentum, optim.nesterov) or adamw (torch's AdamW, its default betas and eps)."""
    lr: float = 0.05
    """Learning rate (the peak rate for the onecycle schedule); AdamW usually wants a smaller one (e.g. 0.001-0.003)."""
    momentum: float = 0.9
    """SGD momentum (sgd only; adamw ignores it)."""
    nesterov: bool = True
    """Use Nesterov momentum (sgd only, needs momentum > 0; adamw ignores it)."""
    weight_decay: float = 5e-4
    """Weight decay: L2 added to the gradient by sgd, decoupled (a shrink of the weights each step) by adamw."""
    label_smoothing: float = 0.0
    """CrossEntropyLoss label smoothing, in [0, 1)."""
    schedule: Literal["none", "cosine", "onecycle"] = "onecycle"
    """Learning-rate schedule over the whole run, stepped once per optimizer step."""
    warmup_epochs: float = 0.0
    """Epochs (fractions too) over which the learning rate rises from near 0 to optim.lr before the schedule goes on from there, any optimizer: linear for none and cosine (0 = no warm-up); onecycle's own rising phase (0 = its usual 25 % of the run)."""
    grad_clip: Optional[float] = None
    """Clip the gradient norm to this value; null = no clipping."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr={self.lr} must be positive")
        _require(0 <= self.momentum < 1, f"optim.momentum={self.momentum} must be in [0, 1)")
        _require(not self.nesterov or self.momentum > 0, "optim.nesterov=true needs optim.momentum > 0")
        _require(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")
        _require(0 <= self.label_smoothing < 1, f"optim.label_smoothing={self.label_smoothing} must be in [0, 1)")
        _require(self.warmup_epochs >= 0, f"optim.warmup_epochs={self.warmup_epochs} must be >= 0")
        _require(self.grad_clip is None or self.grad_clip > 0, f"optim.grad_clip={self.grad_clip} must be positive or null")


@dataclass
class TrainConfig:
    epochs: int = 3
    """Passes over the training set."""
    batch_size: int = 128
    """Global batch size per step, split across processes (must divide by the process count)."""
    eval_batch_size: int = 500
    """Global batch size for evaluation (must divide by the process count)."""
    grad_accum_steps: int = 1
    """Batches whose gradients are summed before each optimizer step."""
    seed: int = 0
    """Seed for weights, data order and augmentation (0 to 2**32 - 1): same seed, same numbers on 1 or N processes."""
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = None
    """no | fp16 | bf16; null = take it from `accelerate launch --mixed_precision` (a set value wins)."""
    cpu_threads: Optional[int] = None
    """Threads per process when training on CPU; null = physical cores / processes, less data.num_workers (accelerate launch would leave 1)."""
    channels_last: bool = False
    """Keep weights and images in channels-last memory order (faster convolutions with tensor cores in bf16/fp16)."""
    compile: bool = False
    """torch.compile the model (faster steps after a one-off compile of tens of seconds; needs a C++ compiler on CPU)."""
    deterministic: bool = False
    """On CUDA, exact repeatability at some speed: deterministic cuDNN and torch algorithms (ops without one warn), CUBLAS_WORKSPACE_CONFIG=:4096:8, no TF32; false = cuDNN autotuning (cudnn.benchmark). See docs/runs.md for what holds with and without it."""
    timeout_minutes: Optional[int] = None
    """Minutes a process waits for the others at a collective (a barrier, an all-reduce) before the run fails; null = torch's default (10 for NCCL, 30 for gloo)."""
    ema: Optional[float] = 0.99
    """Decay of an exponential moving average of the weights, updated every optimizer step (e.g. 0.99); the average is evaluated and saved. null = off."""
    tta: Literal["none", "flip", "flip_translate"] = "flip"
    """Test-time augmentation: average the logits over each test image and its mirror image (flip), and also 1-pixel shifts of both (flip_translate)."""
    eval_every_epoch: bool = True
    """Evaluate after every epoch (on the validation split when data.val_size > 0, else on the test set); false = after the last epoch only, as speed records are timed (the final evaluation, predictions and weights are the same; train.target_accuracy needs true)."""
    test_every_epoch: bool = False
    """With a validation split (data.val_size > 0): evaluate on the test set at every evaluation too (test/*), not only after the last epoch; every choice (best checkpoint, train.target_accuracy, a search) is still made on the validation split. Without a split the test set is evaluated at every evaluation anyway."""
    target_accuracy: Optional[float] = None
    """Stop after the first evaluation whose accuracy (a fraction, e.g. 0.6; on the validation split when data.val_size > 0, else on the test set) reaches this; the run finishes normally and records when (target/* in metrics.jsonl and the W&B summary). null = train all epochs."""
    allow_changes: bool = False
    """Start in a run directory whose config.yaml differs in settings that are the run's identity (every key but where and how it runs, what it reports and when it saves: see docs/runs.md); the changes are recorded in history.jsonl."""
    resume: Optional[str] = None
    """null = new run; auto = continue from the run directory's newest intact checkpoint, if any; or a checkpoint path."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: Optional[str] = None
    """Run directory name under train.output_dir: one folder name (not '.' or '..', no '/'); null = '<model>-<date>-<time>'."""

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"train.epochs={self.epochs} must be >= 1")
        _require(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1")
        _require(self.eval_batch_size >= 1, f"train.eval_batch_size={self.eval_batch_size} must be >= 1")
        _require(self.grad_accum_steps >= 1, f"train.grad_accum_steps={self.grad_accum_steps} must be >= 1")
        _require(self.cpu_threads is None or self.cpu_threads >= 1,
                 f"train.cpu_threads={self.cpu_threads} must be >= 1 or null (all cores)")
        _require(self.timeout_minutes is None or self.timeout_minutes >= 1, "train.timeout_minutes must be >= 1 or null")
        _require(self.ema is None or 0 < self.ema < 1, f"train.ema={self.ema} must be in (0, 1) (e.g. 0.99) or null (off)")
        _require(self.target_accuracy is None or 0 < self.target_accuracy <= 1,
                 f"train.target_accuracy={self.target_accuracy} must be a fraction in (0, 1] (e.g. 0.6) or null (off)")
        _require(self.eval_every_epoch or not self.target_accuracy, "train.target_accuracy needs train.eval_every_epoch")
        _require(0 <= self.seed < SEED_LIMIT, f"train.seed={self.seed} must be from 0 to {SEED_LIMIT - 1} (numpy's seeds)")
        # One folder directly under train.output_dir: '..' would write the run into its parent, '.' into the
        # output folder itself (beside the other runs), and a '/' or NUL names no single folder.
        _require(self.run_name is None or (self.run_name not in ("", ".", "..") and "/" not in self.run_name
                                           and "\0" not in self.run_name),
                 f"train.run_name={self.run_name!r} must be one folder name (not empty, '.' or '..', no '/'): the run "
                 f"directory is train.output_dir/<train.run_name>")


@dataclass
class CheckpointConfig:
    every_n_steps: Optional[int] = None
    """Also save every this many training steps (besides every epoch end); null = epoch ends only."""
    every_epoch: bool = True
    """Save a checkpoint at every epoch end (the best one also as best/); false = only every_n_steps and a stop's save, as speed records are timed (the run still ends with its final weights)."""
    keep_last: int = 3
    """Step checkpoints to keep (besides best/ and the one resumed from); older ones are deleted."""

    def __post_init__(self) -> None:
        _require(self.every_n_steps is None or self.every_n_steps >= 1,
                 f"checkpoint.every_n_steps={self.every_n_steps} must be >= 1 or null")
        _require(self.keep_last >= 1, f"checkpoint.keep_last={self.keep_last} must be >= 1")


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto = online when W&B credentials exist (WANDB_API_KEY or netrc), else offline; disabled = no W&B."""
    project: str = "cifarlab"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (user or team); null = your default."""
    name: Optional[str] = None
    """W&B run name; null = train.run_name."""
    group: Optional[str] = None
    """W&B run group."""
    tags: list[str] = field(default_factory=list)
    """W&B run tags."""
    notes: Optional[str] = None
    """W&B run notes (a description shown with the run)."""


@dataclass
class LoggingConfig:
    every_n_steps: int = 50
    """Log the running training loss every this many steps."""
    level: Literal["info", "warning"] = "info"
    """Console output: info = config, progress, tables and summary; warning = warnings and errors only (--quiet)."""
    per_class_every_epoch: bool = False
    """Print the per-class accuracy table after every evaluation, not only at the end of the run."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings."""

    def __post_init__(self) -> None:
        _require(self.every_n_steps >= 1, f"logging.every_n_steps={self.every_n_steps} must be >= 1")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        _require(self.optim.warmup_epochs < self.train.epochs,
                 f"optim.warmup_epochs={self.optim.warmup_epochs} must be less than train.epochs={self.train.epochs}")
        every, accum = self.checkpoint.every_n_steps, self.train.grad_accum_steps
        # A checkpoint in the middle of an accumulation would drop the gradients summed so far.
        _require(every is None or every % accum == 0,
                 f"checkpoint.every_n_steps={every} must be a multiple of train.grad_accum_steps={accum}")


def load_config(config_file: Optional[str] = None, overrides: Optional[list[str]] = None,
                overrides_from: Optional[str] = None) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides, validated into a :class:`Config`. Overrides are the command
    line's, typed by the person running it: their interpolations are resolved once, here. A file may have been
    written by someone else: it may refer to other keys (``${optim.lr}``) but call no resolver (:func:`refuse_resolvers`).
    ``overrides_from`` names the file the overrides were read from (a sweep's record): they are held to a file's rule."""
    try:
        layers = []
        if config_file is not None:
            path = Path(config_file)
            if not path.is_file():
                raise ConfigError(f"--config {config_file}: no such file; presets live in configs/ (e.g. configs/smoke.yaml)")
            try:
                loaded = OmegaConf.load(path)
            except yaml.YAMLError as error:
                raise ConfigError(f"--config {config_file}: not valid YAML: {_yaml_problem(error)}") from None
            except (OSError, AssertionError) as error:  # unreadable; or a scalar: OmegaConf's IOError (a file of 0),
                # or its assertion once it has read a string ('NO') as YAML again (false): no mapping either way
                raise ConfigError(f"--config {config_file}: {getattr(error, 'strerror', None) or not_a_mapping(Config)}"
                                  ) from None
            if not OmegaConf.is_dict(loaded):  # a list
                raise ConfigError(f"--config {config_file}: {not_a_mapping(Config)}")
            refuse_resolvers(loaded, config_file)
            layers.append(_yaml_no(loaded))
        typed = OmegaConf.create()
        for item in overrides or []:  # one at a time, as OmegaConf.from_dotlist does, to name the one at fault
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.01 or data.train_size=null)")
            try:
                typed.merge_with_dotlist([item])
            except yaml.YAMLError as error:  # an unbalanced quote or bracket: a shell-quoting slip
                raise ConfigError(f"override {item!r}: its value is not valid YAML ({_yaml_problem(error)}); check "
                                  f"its quotes and brackets (the shell takes off one pair of quotes)") from None
            except (IndexError, TypeError, ValueError):  # OmegaConf's, for a key that is no path of keys: '[=1' (a
                # bracket), 'model.name=x' after 'model=-' (a list)
                raise ConfigError(f"override {item!r}: not a path of config keys (e.g. optim.lr=0.01), or one below a "
                                  f"list an earlier override set") from None
        if overrides_from is not None:
            refuse_resolvers(typed, overrides_from)
        layers.append(_yaml_no(typed))
        try:
            merged = OmegaConf.merge(_schema(), *layers)  # merge copies the schema, built once
        except TypeError:  # not an OmegaConf error: its merge of a mapping onto a list (data.mean.0=1)
            keys = [key for layer in layers for key in flatten(OmegaConf.to_container(layer, resolve=False))]
            raise ConfigError(below_a_list(keys, Config)) from None
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(one_line(error, Config)) from None
    assert isinstance(config, Config)
    return config


_schema = functools.lru_cache(maxsize=1)(lambda: OmegaConf.structured(Config))  # half of a load's time (13 ms)
_yaml_problem = lambda error: getattr(error, "problem", None) or type(error).__name__  # noqa: E731 - PyYAML's own words


def refuse_resolvers(document: Any, where: str) -> None:
    """Refuse a file's interpolation that calls a resolver anywhere in ``document`` (see cifarlab.interpolation)."""
    found = resolver_call(OmegaConf.to_container(document, resolve=False) if OmegaConf.is_config(document)
                          else document)
    if found is not None:
        key, text = (printable(part) for part in found)  # on one line, whatever the file holds
        raise ConfigError(f"{where}: {key or 'a value'}: {text} calls a resolver, which a file may not (it could read "
                          f"the environment); a file may refer to other keys (${{optim.lr}}): set {key or 'the value'} "
                          f"on the command line instead")


def _yaml_no(node: Any) -> Any:
    """YAML reads a bare ``no`` as false; ``train.mixed_precision: no`` means the choice "no"."""
    if OmegaConf.select(node, "train.mixed_precision") is False:
        node.train.mixed_precision = "no"
    return node


def with_run_name(config: Config, run_name: str) -> Config:
    """A copy of ``config`` whose run name is filled in (the loaded config is never mutated)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, run_name=run_name))


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested containers: for YAML files, W&B's run config and checkpoints."""
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    """config.yaml's text, which :func:`load_config` reads back as ``config``: text that would read as an
    interpolation (a value typed as ``\\${x}``, which holds ``${x}``) is written escaped."""
    return OmegaConf.to_yaml(OmegaConf.create(literal(to_dict(config))))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys (``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``)."""
    if not isinstance(node, dict) or not node:
        return {prefix[:-1]: node} if prefix else {}
    return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


def shown(value: Any) -> str:
    """A value as it is written in an override: null, true/false, 0.05, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(shown(item) for item in value) + "]"
    return str(value)
