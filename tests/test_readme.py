"""The README stays true: every setting documented with its default, the test command named."""

from __future__ import annotations

from pathlib import Path

from rca_common.settings import Settings, markdown_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_environment_variable_is_documented_with_its_default() -> None:
    for row in markdown_table().splitlines()[2:]:
        assert row in README, f"README lacks or has a stale row: {row}"
    assert len(Settings.model_fields) == markdown_table().count("\n") - 1


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in README and "make test" in ci
