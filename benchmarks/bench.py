"""`python benchmarks/bench.py [options]`: the same as `python -m benchmarks [options]` (benchmarks/main.py),
kept so that existing commands and scripts keep working."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script: import the package from the repo root, not modules from here
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(HERE.parent))

from benchmarks.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
