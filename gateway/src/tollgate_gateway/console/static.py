"""Serves the console's static export (gateway/console/out) under /console.

The export is plain files; no Node.js runs. Every answer carries a strict Content-Security-
Policy. Next.js puts a few inline bootstrap scripts into each page, so a page's policy lists
the SHA-256 of exactly those scripts (worked out once per file) instead of 'unsafe-inline'.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

PREFIX = "/console"
# gateway/src/tollgate_gateway/console/static.py -> gateway/console/out
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "console" / "out"

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)

BASE_POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "manifest-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


def inline_script_hashes(html: bytes) -> list[str]:
    """The CSP source expressions ('sha256-…') of a page's inline scripts."""
    out = []
    for match in _INLINE_SCRIPT.finditer(html):
        digest = hashlib.sha256(match.group(1)).digest()
        out.append(f"'sha256-{base64.b64encode(digest).decode()}'")
    return sorted(set(out))


def content_security_policy(script_hashes: list[str] | None = None) -> str:
    policy = dict(BASE_POLICY)
    if script_hashes:
        policy["script-src"] = " ".join(["'self'", *script_hashes])
    return "; ".join(f"{k} {v}" for k, v in policy.items())


@dataclass(frozen=True)
class _Page:
    mtime_ns: int
    csp: str


class ConsoleFiles:
    """Resolves request paths inside the export directory, never outside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._pages: dict[Path, _Page] = {}

    @property
    def built(self) -> bool:
        return (self.root / "index.html").is_file()

    def resolve(self, rel: str) -> Path | None:
        if "\x00" in rel:
            return None
        candidate = (self.root / rel.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            return None
        return candidate

    def csp_for(self, path: Path) -> str:
        mtime = path.stat().st_mtime_ns
        page = self._pages.get(path)
        if page is None or page.mtime_ns != mtime:
            page = _Page(mtime, content_security_policy(inline_script_hashes(path.read_bytes())))
            self._pages[path] = page
        return page.csp

    def response(self, rel: str) -> Response:
        path = self.resolve(rel)
        if path is not None and path.is_dir():
            if rel and not rel.endswith("/"):
                return self._with_headers(RedirectResponse(f"{PREFIX}/{rel}/", status_code=308))
            path = path / "index.html"
        if path is None or not path.is_file():
            missing = self.root / "404.html"
            if missing.is_file():
                return self._file(missing, status_code=404)
            return self._not_built()
        return self._file(path)

    def _file(self, path: Path, status_code: int = 200) -> Response:
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        response = FileResponse(path, status_code=status_code, media_type=media_type)
        if path.suffix == ".html":
            response.headers["content-security-policy"] = self.csp_for(path)
            response.headers["cache-control"] = "no-cache"
        else:
            response.headers["content-security-policy"] = content_security_policy()
            hashed = "/_next/static/" in path.as_posix()
            response.headers["cache-control"] = (
                "public, max-age=31536000, immutable" if hashed else "no-cache"
            )
        return self._with_headers(response)

    def _not_built(self) -> Response:
        body = (
            "The console is not built. Run hack/build-console.sh (make run does it) or set "
            "TOLLGATE_CONSOLE_DIR to a built export.\n"
        )
        return self._with_headers(Response(body, status_code=404, media_type="text/plain"))

    @staticmethod
    def _with_headers(response: Response) -> Response:
        response.headers.setdefault("content-security-policy", content_security_policy())
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        return response


def console_routes(root: Path | None) -> list[BaseRoute]:
    files = ConsoleFiles(root or DEFAULT_DIR)

    async def serve(request: Request) -> Response:
        return files.response(request.path_params.get("path", ""))

    async def bare(request: Request) -> Response:
        return ConsoleFiles._with_headers(RedirectResponse(f"{PREFIX}/", status_code=308))

    return [
        Route(PREFIX, bare, methods=["GET", "HEAD"], include_in_schema=False),
        Route(PREFIX + "/{path:path}", serve, methods=["GET", "HEAD"], include_in_schema=False),
    ]
