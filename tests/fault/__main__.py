"""``python -m tests.fault [--full] [pytest options]``: run the fault tests.

Without ``--full`` they run at the small size CI uses (a few minutes on two cores); with it at the
size of the issue: 100 concurrent pilot clients, 10,000 jobs per load, kills twice. The audit of
every load is printed at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def main(argv: list[str]) -> int:
    full = "--full" in argv
    options = [arg for arg in argv if arg != "--full"]
    if full:
        os.environ["BAMBOO_FAULT_FULL"] = "1"
    else:
        os.environ.pop("BAMBOO_FAULT_FULL", None)
    return int(pytest.main([str(Path(__file__).parent), *options]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
