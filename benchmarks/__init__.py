"""tunegrid benchmarks: `make bench` (benchmarks/bench.py); see benchmarks/README.md."""
