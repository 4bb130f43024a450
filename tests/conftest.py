"""Shared test hygiene."""

import pytest
from accelerate.state import AcceleratorState


@pytest.fixture(autouse=True)
def _no_accelerator_state_leaks():
    """accelerate keeps one process state per interpreter: a test that made an Accelerator in-process must not
    leave it to the next test (a forked two-process test would inherit a single-process main state)."""
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
