"""Print pip constraints that pin each of setup.cfg's install_requires, and its ``search`` extra, to the lowest
version its ``>=`` bound admits (``torch>=2.10`` -> ``torch==2.10``): the second environment .ci/run tests, so that
the declared ranges are tested ranges at both ends."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

BOUND = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*")


def main() -> None:
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    declared = setup["options"]["install_requires"] + "\n" + setup["options.extras_require"]["search"]
    requirements = [line for line in declared.splitlines() if line.strip()]
    for requirement in requirements:
        bound = BOUND.fullmatch(requirement)
        if bound is None:
            sys.exit(f".ci/lowest.py: {requirement!r} in setup.cfg has no single >= bound to test")
        print(f"{bound[1]}=={bound[2]}")


if __name__ == "__main__":
    main()
