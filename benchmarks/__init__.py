"""tunegrid benchmarks: `make bench` (`python -m benchmarks`, benchmarks/main.py); see benchmarks/README.md."""
