"""Fixtures for the recipe tests (helpers in recipekit.py beside this file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # recipekit beside this file

from recipekit import RecipeFleet


@pytest.fixture
def recipe_fleet(fleet, tmp_path):
    f = RecipeFleet(fleet, tmp_path)
    yield f
    f.close()
