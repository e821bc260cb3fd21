"""Test-session settings: never touch the network, and find the shared CMKP data if present."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

CMKP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmkp"


@pytest.fixture(scope="session")
def cmkp_dir() -> Path:
    """The CMKP benchmark files (../shared/data/cmkp); tests using them skip in a user's clone."""
    if not (CMKP_DIR / "test_src.txt").is_file():
        pytest.skip(f"CMKP data not found at {CMKP_DIR} (only present beside the team's checkout; "
                    "see README 'Data')")
    return CMKP_DIR
