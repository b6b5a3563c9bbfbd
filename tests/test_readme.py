"""The README stays true: every setting is documented, its first lines give the two commands, and its links
(and those of docs/) lead somewhere."""

import re
from pathlib import Path

import pytest

from jobs.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f"VGS_{name.upper()}" for name in ServiceSettings.model_fields if f"`VGS_{name.upper()}`" not in README]
    assert not missing, f"README lacks {missing}"


def test_first_lines_give_make_run_and_make_test():
    head = README.splitlines()[:5]
    assert any(line.strip().startswith("make run") for line in head)
    assert any(line.strip().startswith("make test") for line in head)


DOCS = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))


@pytest.mark.parametrize("page", ["README.md", *DOCS])
def test_relative_links_lead_to_files(page):
    text = (REPO / page).read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    missing = [t for t in targets if t and not (REPO / page).parent.joinpath(t).exists()]
    assert not missing, f"{page} links to {missing}"


def test_the_training_and_evaluation_record_lives_in_docs():
    for page in ("docs/models.md", "docs/training.md", "docs/evaluation.md"):
        assert f"]({page})" in README
    assert "### Serve your own model" in README
