"""Shared test hygiene."""

from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from tiny_runs import write_tiny_data


@pytest.fixture(autouse=True)
def _no_accelerator_state_leaks():
    """accelerate keeps one process state per interpreter: a test that made an Accelerator in-process must not
    leave it to the next test (a forked two-process test would inherit a single-process main state)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """24 short synthetic videos (18 train, 6 held out), written once per test module."""
    return write_tiny_data(tmp_path_factory.mktemp("data"))
