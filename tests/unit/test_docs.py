"""The README tells the truth about configuration: every setting is documented."""

from __future__ import annotations

from pathlib import Path

from tpotserve.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"README's configuration table lacks {missing}"


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
