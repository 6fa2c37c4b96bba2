"""Print pip constraints that pin each of setup.cfg's install_requires, its ``search`` extra, and the libraries of its
``test`` extra that tests call (TESTED_WITH), to the lowest version its ``>=`` bound admits (``torch>=2.10`` ->
``torch==2.10``): the second environment .ci/run tests, so that the declared ranges are tested ranges at both ends."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

BOUND = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*")
TESTED_WITH = ("hypothesis",)
"""The test extra's libraries whose API the unit tier calls (the property tests'); its tools (pytest, ruff, mypy) come
at their newest in both environments."""


def main() -> None:
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = setup["options.extras_require"]
    declared = setup["options"]["install_requires"] + "\n" + extras["search"]
    requirements = [line for line in declared.splitlines() if line.strip()]
    requirements += [line for line in extras["test"].splitlines()
                     if (bound := BOUND.fullmatch(line)) is not None and bound[1] in TESTED_WITH]
    for requirement in requirements:
        bound = BOUND.fullmatch(requirement)
        if bound is None:
            sys.exit(f".ci/lowest.py: {requirement!r} in setup.cfg has no single >= bound to test")
        print(f"{bound[1]}=={bound[2]}")


if __name__ == "__main__":
    main()
