"""Fixtures for the recipe tests (helpers in recipekit.py beside this file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recipes.recipekit import RecipeFleet


@pytest.fixture
def recipe_tools() -> dict[str, Path]:
    """Programs the agent finds on its PATH besides the machine's own; a test module that needs a
    package manager the machine lacks (pnpm, Yarn, uv) overrides this fixture."""
    return {}


@pytest.fixture
def recipe_fleet(fleet, tmp_path, recipe_tools):
    f = RecipeFleet(fleet, tmp_path, tools=recipe_tools)
    yield f
    f.close()
