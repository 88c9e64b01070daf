"""Fixtures shared by tests/ and bench/."""
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings in ../shared/data, read in place (never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests need ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture
def uid() -> str:
    """A fresh id for stream names and source_ids, so that LSL tests never see each other."""
    return uuid.uuid4().hex[:12]
