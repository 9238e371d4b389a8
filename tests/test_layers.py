"""The layer tables (tests/layers.py) name every test module and nothing else, and every
collected test carries exactly one layer marker."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from tests.layers import LAYERS, MODULES, PODS_PREFIX, TESTS

TESTS_DIR = Path(__file__).resolve().parent


def modules_on_disk() -> set[str]:
    return {path.stem for path in TESTS_DIR.glob("test_*.py")}


def test_every_test_module_has_a_layer() -> None:
    missing = {m for m in modules_on_disk() - set(MODULES) if not m.startswith(PODS_PREFIX)}
    assert not missing, f"add these modules to MODULES in tests/layers.py: {sorted(missing)}"


def test_the_tables_name_only_modules_that_exist() -> None:
    gone = (set(MODULES) | set(TESTS)) - modules_on_disk()
    assert not gone, f"tests/layers.py names modules that do not exist: {sorted(gone)}"
    pods = {m for m in MODULES if m.startswith(PODS_PREFIX)}
    assert not pods, f"{sorted(pods)} are pods by their name: leave them out of MODULES"


def test_the_tables_name_only_tests_that_exist() -> None:
    for module, functions in TESTS.items():
        tree = ast.parse((TESTS_DIR / f"{module}.py").read_text())
        defined = {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        gone = set(functions) - defined
        assert not gone, f"TESTS names tests that {module} does not define: {sorted(gone)}"
        same = {f for f, layer in functions.items() if layer == MODULES[module]}
        assert not same, f"TESTS repeats {module}'s own layer for {sorted(same)}"


def test_every_layer_is_a_registered_marker() -> None:
    config = tomllib.loads((TESTS_DIR.parent / "pyproject.toml").read_text())
    markers = config["tool"]["pytest"]["ini_options"]["markers"]
    registered = {line.split(":", 1)[0].strip() for line in markers}
    assert registered == set(LAYERS)
    assert set(MODULES.values()) | {v for t in TESTS.values() for v in t.values()} <= set(LAYERS)


def test_every_collected_test_has_exactly_one_layer(request: pytest.FixtureRequest) -> None:
    for item in request.session.items:
        layers = [mark.name for mark in item.iter_markers() if mark.name in LAYERS]
        assert len(layers) == 1, f"{item.nodeid}: layers {layers}"
