"""The alert rules are valid and each alert fires when it should and only then:
``promtool check rules`` and ``promtool test rules`` (deploy/prometheus/alerts_test.yml).

promtool comes from Debian's ``prometheus`` package, which .ci/run installs; without it
these tests fail rather than skip, so CI cannot pass with the rules unchecked.
"""

from __future__ import annotations

import shutil
import subprocess

from tests.support.paths import ROOT

RULES = ROOT / "deploy" / "prometheus"


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    done = subprocess.run(
        [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_the_rules_are_valid() -> None:
    assert "SUCCESS: 6 rules found" in _promtool("check", "rules", "alerts.yml")


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")
