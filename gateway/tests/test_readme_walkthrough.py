"""The README's curl walkthrough (login → alias → key → traffic → usage), run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tollgate_dev.plugins.services import ADMIN_EMAIL, ADMIN_PASSWORD, Admin
from tollgate_dev.servers.programs import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- walkthrough:start -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", text, re.S
    )
    assert match, "the README has no walkthrough block"
    return match.group(1)


def test_the_readme_walkthrough_runs_as_written(gateway: GatewayProcess, admin: Admin) -> None:
    # What `make run-standin` would be: only the address and the admin differ.
    env = {
        **os.environ,
        "TG": gateway.url,
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    alias = json.loads(lines[0])
    assert alias["alias"] == "walkthrough" and alias["input_price_per_mtok"] == "0.50000000"
    assert lines[1:4] == ["200", "200", "429"]
    usage = json.loads(lines[4])
    (row,) = [r for r in usage["rows"] if r["name"] == "walkthrough"]
    assert (row["requests"], row["refused"], row["errors"]) == (3, 1, 1)
    assert row["completion_tokens"] > 0 and float(row["cost"]) > 0
    keys = {k["id"]: k for k in admin.http.get("/admin/keys").json()}
    assert keys[row["id"]]["name"] == "walkthrough"
