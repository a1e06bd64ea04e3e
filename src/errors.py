"""What can go wrong in a run, as exception types, and the record status each one means.

Every module raises these rather than importing them from the module that happens to catch them, so the
import graph stays one-way (config → data → model → train → evaluate → record → report)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration error: its message is one line naming key, value and what is allowed."""


class Diverged(RuntimeError):
    """The training loss became NaN or inf."""


class Interrupted(BaseException):
    """SIGTERM/SIGINT arrived (src/interrupts.py); the run stops, with a checkpoint once training started.
    A BaseException, as KeyboardInterrupt is, so that no library's `except Exception` swallows it."""


class SkippedOOM(Exception):
    """The run is predicted not to fit in device memory (sweep.skip_predicted_oom)."""


class RankFailed(RuntimeError):
    """A process of a run over several (src/distributed.py) failed: the message names the rank and its error,
    `status` is what that error means there (diverged, oom, failed), a note holds the rank's traceback."""

    def __init__(self, message: str, status: str = "failed"):
        super().__init__(message)
        self.status = status


def first_line(exc: BaseException, limit: int) -> str:
    """The first line of an exception's message (its type name when it has none), cut at `limit` characters:
    library errors inside tunegrid's one-line messages."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError (a RuntimeError subclass), MemoryError, or any 'out of memory' message."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return "out of memory" in str(exc).lower()


def status_of(exc: BaseException) -> str:
    """The record status of a run that raised `exc` (records.STATUSES)."""
    if isinstance(exc, ConfigError):
        return "invalid"
    if isinstance(exc, RankFailed):
        return exc.status
    known = {Diverged: "diverged", Interrupted: "interrupted", SkippedOOM: "skipped_oom"}
    return known.get(type(exc)) or ("oom" if is_oom(exc) else "failed")
