"""The errors of the experiment layer, each one message a user can act on.

The CLI maps them to exit codes: every one here is exit code 2 (bad input or a folder that may
not be used), except :class:`ComputeError` (1: a failure while computing, finished chunks kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "RunError", "ResultsExistError", "LockedError", "NotResultsError",
           "DamagedResultsError", "IncompleteResultsError", "ComputeError", "out_option"]


def out_option(folder: "str | Path") -> str:
    """" --out PARENT" for a command that must write ``folder`` again; "" when its parent is
    the default ``results``."""
    parent = Path(folder).parent
    return "" if parent == Path("results") else f" --out {parent}"


class ConfigError(Exception):
    """A bad config: names the file, the key, what is wrong and the allowed values."""

    def __init__(self, file: "str | Path | None", key: "str | None", problem: str,
                 allowed: "list[str] | tuple[str, ...] | str | None" = None):
        self.file = str(file) if file is not None else "<config>"
        self.key = key
        self.problem = problem
        self.allowed = allowed
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " + (f"key '{self.key}': " if self.key else "")
        msg = where + self.problem
        if self.allowed:
            allowed = self.allowed if isinstance(self.allowed, str) else ", ".join(self.allowed)
            msg += f" (allowed: {allowed})"
        return msg


class RunError(Exception):
    """A run that cannot start: its folder exists, is locked, or may not be written."""


class ResultsExistError(RunError):
    """The target folder exists and the options do not allow replacing or resuming it."""


class LockedError(RunError):
    """Another live run holds the folder's lock."""

    def __init__(self, folder: Path, why: str, who: str = "another process") -> None:
        self.who = who  # the holder: "pid N on HOST, started T"
        super().__init__(f"{folder}: {why}; wait for it to finish, or use --out DIR to write "
                         "elsewhere")


class NotResultsError(RunError):
    """A folder that is not a precision-lab results folder."""

    def __init__(self, folder: "str | Path", why: str) -> None:
        self.folder = Path(folder)
        super().__init__(f"{folder} is not a precision-lab results folder ({why})")


class DamagedResultsError(RunError):
    """A file of a results folder is missing, unreadable, or not what the manifest recorded."""

    def __init__(self, path: "str | Path", why: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path} {why}; recompute the folder with precision-lab run --force "
                         "CONFIG")


class IncompleteResultsError(RunError):
    """A partial run: some chunks are missing."""

    def __init__(self, folder: Path, manifest: Any) -> None:
        self.manifest = manifest
        done, total = manifest.chunks_done, len(manifest.chunks)
        super().__init__(f"{folder} is an unfinished run ({done} of {total} chunks done); "
                         f"finish it with precision-lab run --resume CONFIG"
                         f"{out_option(folder)}")


class ComputeError(Exception):
    """A failure while computing (exit code 1); finished chunks are kept for --resume."""
