"""Shared fixtures: a temporary lake and its settings. Tests never touch ./data_lake."""

from __future__ import annotations

from pathlib import Path

import pytest

from lake.storage import LocalStorage
from testkit.processes import make_settings
from utils.config import Settings


@pytest.fixture
def lake_root(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    LocalStorage(root).ensure_layout()
    return root


@pytest.fixture
def storage(lake_root: Path) -> LocalStorage:
    return LocalStorage(lake_root)


@pytest.fixture
def settings(lake_root: Path) -> Settings:
    return make_settings(lake_root)
