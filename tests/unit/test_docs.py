"""The docs tell the truth: every setting is documented, and the README leads to every doc."""

from __future__ import annotations

import re
from pathlib import Path

from tpotserve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
LOCAL_LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)")


def test_every_setting_is_in_the_configuration_table() -> None:
    assert "\n## Configuration\n" in CONFIGURATION, "docs/configuration.md lost its Configuration section"
    table = CONFIGURATION.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"docs/configuration.md's configuration table lacks {missing}"


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README and "make test" in README


def test_readme_links_every_doc() -> None:
    linked = set(LOCAL_LINK.findall(README))
    docs = [f"docs/{doc.name}" for doc in sorted((ROOT / "docs").glob("*.md"))]
    missing = [doc for doc in docs if doc not in linked]
    assert not missing, f"the README does not link {missing}"


def test_local_links_in_the_readme_and_docs_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)} -> {target}"
        for page in pages
        for target in LOCAL_LINK.findall(page.read_text())
        if not (page.parent / target).exists()
    ]
    assert not broken, f"links to files that do not exist: {broken}"


LAYOUT_PACKAGES = ("services/api/tpotserve_api", "services/trainer/tpotserve_trainer", "shared/tpotserve",
                   "cli/tpotserve_cli", "native")


def test_the_architecture_layout_names_every_module() -> None:
    """docs/architecture.md's layout is drawn from the code: every module has its line."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    layout = text[text.index("## Layout"):]
    missing = [f"{package}/{path.name}" for package in LAYOUT_PACKAGES for path in sorted((ROOT / package).glob("*.py"))
               if path.name not in ("__init__.py", "__main__.py") and path.name not in layout]
    # A subpackage's modules by their path in it (backup/format.py), each on its own line.
    missing += [f"{package}/{path.parent.name}/{path.name}" for package in LAYOUT_PACKAGES
                for path in sorted((ROOT / package).glob("*/*.py"))
                if (path.parent / "__init__.py").exists() and path.name not in ("__init__.py", "__main__.py")
                and f"{path.parent.name}/{path.name}" not in layout]
    assert not missing, f"docs/architecture.md's layout lacks {missing}"


def test_the_shared_packages_all_lists_every_module() -> None:
    import tpotserve

    package = ROOT / "shared" / "tpotserve"
    modules = sorted([p.stem for p in package.glob("*.py") if p.stem != "__init__"]
                     + [p.parent.name for p in package.glob("*/__init__.py")])  # subpackages: tpotserve.backup
    assert sorted(tpotserve.__all__) == modules
