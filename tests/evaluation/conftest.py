"""Fixtures for the evaluation tests (helpers live in eval_helpers.py)."""

import pytest
from eval_helpers import read_golden


@pytest.fixture
def golden():
    return read_golden()
