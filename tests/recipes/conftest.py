"""Fixtures for the recipe tests (helpers in recipekit.py beside this file)."""

from __future__ import annotations

import pytest

from tests.recipes.recipekit import RecipeFleet


@pytest.fixture
def recipe_fleet(fleet, tmp_path):
    f = RecipeFleet(fleet, tmp_path)
    yield f
    f.close()
