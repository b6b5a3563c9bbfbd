"""A fresh machine needs one command: `make test` installs what the suite needs (the web page's tests need
Debian's chromium), and CI's `.ci/run` is nothing but a call of it."""

from __future__ import annotations

import subprocess

from service_stack import REPO


def test_ci_only_calls_make_test():
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]


def test_make_test_installs_the_browser_before_the_suite_runs():
    planned = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    browser = next(i for i, line in enumerate(lines) if "command -v chromium" in line)
    assert "apt-get" in planned.stdout and "install chromium" in planned.stdout
    suite = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert browser < suite
    assert subprocess.run(["make", "browser"], cwd=REPO, capture_output=True, timeout=300).returncode == 0
