"""Locates the real exports the unit tests run on; they come from `make exports`."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def export_dir(model: str) -> Path:
    path = REPO_ROOT / "exports" / model
    if not (path / "model.json").exists():
        pytest.fail(f"{path} is missing: run `make exports` (make test does it first)")
    return path
