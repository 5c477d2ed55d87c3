"""Shared fixtures: where the examples are, and a clean environment for CLI runs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "examples"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """../shared/examples beside the checkout (CI always has it)."""
    if not EXAMPLES.is_dir():
        pytest.fail(f"shared examples not found at {EXAMPLES}: check out the project beside ../shared")
    return EXAMPLES


@pytest.fixture(scope="session")
def windmill_dir(examples_dir: Path) -> Path:
    return examples_dir / "windmill"


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return REPO / "assets"


@pytest.fixture(autouse=True)
def _no_workspace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their workspace explicitly; a developer's DS4D_WORKSPACE must not leak in."""
    monkeypatch.delenv("DS4D_WORKSPACE", raising=False)


@pytest.fixture
def reported():
    """What stages report during the test (messages, progress, results), as a Recorder."""
    from ds4d_cli import report

    with report.using(report.Recorder()) as recorder:
        yield recorder
