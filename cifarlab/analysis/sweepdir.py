"""The map of a sweep or search folder: every file and folder a sweep writes, named in one place (as
cifarlab.run.rundir names a run directory's). It stands in the analysis wing, below what runs trials, because what
judges finished runs (compare's search view) reads the same folder without importing the runner or Optuna.

    <train.output_dir>/<sweep name>/
      sweep.yaml           the sweep's record: its trials, their settings and the versions it ran (see
                           cifarlab.experiments.record); whole
      logs/<trial>.log     each trial's trainer output, appended by every attempt
      logs/<trial>.outcome.json  how the trial's last attempt ended (see cifarlab.experiments.runner); whole
      <trial>/             each trial's run directory (cifarlab.run.rundir); a search's are trial-NNNN/
    and a search's besides:
      search.journal       Optuna's journal of the study (Optuna's own file)
      search.yaml          what the search optimizes: its space, metric and direction; whole
      claims/<trial>.lock  a worker's POSIX lock on each trial it runs (see cifarlab.experiments.study)
      confirm.yaml         the sweep file of its confirmation (the winners and the base, over seeds); whole
      confirm/             the confirmation's sweep folder, laid out as above
      wandb/               the search's W&B summary run (W&B's own files; see cifarlab.experiments.insight)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cifarlab.errors import UsageError
from cifarlab.run.rundir import RunDir

CONFIRMATION = "confirm"
"""The name of a search's confirmation sweep, and of its folder inside the search's."""


def trial_name(number: int) -> str:
    """A search trial's run directory: ``trial-0007``."""
    return f"trial-{number:04d}"


@dataclass(frozen=True)
class SweepDir:
    """Paths of one sweep or search folder. ``SweepDir(Path("runs/lr")).record`` etc.; creates nothing."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / "sweep.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, trial: str) -> Path:
        return self.logs / f"{trial}.log"

    def outcome(self, trial: str) -> Path:
        return self.logs / f"{trial}.outcome.json"

    def run(self, trial: str) -> RunDir:
        return RunDir(self.root / trial)

    @property
    def journal(self) -> Path:
        return self.root / "search.journal"

    @property
    def description(self) -> Path:
        """``search.yaml``: the search's metric, direction and space, for what reads the folder without Optuna."""
        return self.root / "search.yaml"

    @property
    def claims(self) -> Path:
        return self.root / "claims"

    def claim(self, trial: str) -> Path:
        return self.claims / f"{trial}.lock"

    @property
    def confirmation_file(self) -> Path:
        return self.root / "confirm.yaml"

    @property
    def confirmation(self) -> SweepDir:
        return SweepDir(self.root / CONFIRMATION)

    @property
    def wandb(self) -> Path:
        """W&B's own folder of a run logged with ``dir=`` the sweep folder (a search's summary run)."""
        return self.root / "wandb"

    def is_search(self) -> bool:
        return self.journal.is_file()

    def search_trials(self) -> list[tuple[int, RunDir]]:
        """A search's trial run directories that hold a config, by trial number."""
        found = ((re.fullmatch(r"trial-(\d+)", path.name), path) for path in self.root.glob("trial-*"))
        return sorted((int(match[1]), RunDir(path)) for match, path in found
                      if match and RunDir(path).config.is_file())


def read_yaml(path: Path) -> Any:
    """A YAML file's contents (a sweep file, a record, search.yaml), read as OmegaConf reads presets (so 1e-3 is a
    number here too)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # PyYAML's errors (yaml is not imported here) and OmegaConf's
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{path}: not a YAML file ({reason})") from None
