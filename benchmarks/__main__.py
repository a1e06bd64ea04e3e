"""`python -m benchmarks [options]`: the benchmark (benchmarks/main.py; `--help` lists the options)."""

import sys

from benchmarks.main import main

sys.exit(main())
