"""The benchmark's sections: each takes the invocation (runner.Bench) and a profile and returns its result,
the JSON the results file holds under profiles.<profile>.<section>."""

from __future__ import annotations

from benchmarks.sections.batching import section_batching, section_batching_loss
from benchmarks.sections.launchers import section_launchers
from benchmarks.sections.methods import section_methods
from benchmarks.sections.overhead import section_overhead
from benchmarks.sections.speedups import section_speedups
from benchmarks.sections.study import section_study

SECTION_FUNCS = {
    "overhead": section_overhead,
    "batching": section_batching,
    "batching_loss": section_batching_loss,
    "methods": section_methods,
    "study": section_study,
    "launchers": section_launchers,
    "speedups": section_speedups,
}
