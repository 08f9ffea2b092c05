"""Shared test helpers: paths to the repository and to ../shared fixtures."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def encoder_fixtures() -> Path:
    """The encoder parity fixtures in ../shared/fixtures/encoders, or skip when this clone has none."""
    path = SHARED_FIXTURES / "encoders"
    if not path.is_dir():
        pytest.skip(f"encoder parity fixtures not found at {path} (they live in the project's shared/ folder)")
    return path
