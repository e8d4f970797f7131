"""Shared fixtures: tiny configs written into tmp_path."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

# CI (CI=true) runs the property tests derandomized, so a red CI is reproducible; locally
# hypothesis explores new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(text, name="exp.toml") -> Path of a TOML file in tmp_path."""

    def _write(text: str, name: str = "exp.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return _write


TINY = """
name = "tiny"
question = "A tiny test experiment."
classes = 5
batch_size = 3
samples = 2
seed = 7
formats = ["float16", "float32"]
implementations = ["naive", "lse", "torch"]
reduction = "none"

[inputs]
generator = "normal"
scale = [1.0, 30.0]
"""


@pytest.fixture
def tiny_config(write_config) -> Path:
    """Two sweep points x two formats = four chunks, three implementations."""
    return write_config(TINY)


def _write_report(res, progress):
    from precision_lab.report.report import write_report

    write_report(res, progress)


@pytest.fixture(scope="session")
def finalize():
    """The report, as the CLI passes it to run_experiment(..., finalize=...)."""
    return _write_report
