"""The chart's PrometheusRule: valid for promtool, and each alert fires (and only then) in the
unit tests of tests/chart/promtool/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import Render, one

TESTS = Path(__file__).parent / "promtool" / "tollgate_rules_test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: hack/ensure-debs.sh prometheus", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def rule_groups(render: Render) -> list[dict[str, Any]]:
    rule = one(render(sets={"metrics.prometheusRule.enabled": "true"}), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules(
    promtool: str, rule_groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
    result = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_promtool_unit_tests_pass(
    promtool: str, rule_groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    result = run(promtool, "test", "rules", TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing(rule_groups: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"] for group in rule_groups for rule in group["rules"]}
    assert alerts >= {
        "TollgateHighErrorRate",
        "TollgateHighLatency",
        "TollgateLimitRefusals",
        "TollgateUsageBacklog",
        "TollgateUsageDropped",
        "TollgateRedisDown",
        "TollgateModelPullFailures",
        "TollgateOperatorReconcileErrors",
    }
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts never tested firing: {alerts - fired}"
    for group in rule_groups:
        for rule in group["rules"]:
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
