"""The README stays true: every setting is documented, and its first lines give the two commands."""

from pathlib import Path

from jobs.settings import ServiceSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f"VGS_{name.upper()}" for name in ServiceSettings.model_fields if f"`VGS_{name.upper()}`" not in README]
    assert not missing, f"README lacks {missing}"


def test_first_lines_give_make_run_and_make_test():
    head = README.splitlines()[:5]
    assert any(line.strip().startswith("make run") for line in head)
    assert any(line.strip().startswith("make test") for line in head)
