"""The console test's view of one browser tab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Page


class Console:
    """One browser tab on the console, with what went wrong in it."""

    def __init__(self, page: Page, base_url: str, artifacts: Path) -> None:
        self.page = page
        self.base_url = base_url
        self.artifacts = artifacts
        self.errors: list[str] = []
        self.failed: list[str] = []
        page.on(
            "response",
            lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
        )

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + "/console" + path)

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def csp_violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__csp || []")
        return found

    def axe(self) -> list[dict[str, Any]]:
        """Serious and critical axe-core violations of the current page (WCAG 2.x A/AA)."""
        result: dict[str, Any] = self.page.evaluate(
            """async () => await axe.run(document, {
                 runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                                 'best-practice']},
                 resultTypes: ['violations']})"""
        )
        return [
            {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
