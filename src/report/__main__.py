"""`python -m src.report DIR [--no-plots] [--allow-stale]` (see src.report.cli)."""

import sys

from src.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
