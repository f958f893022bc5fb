"""The console's static files: paths stay inside the export, every answer carries a CSP that
allows exactly the page's own inline scripts."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from starlette.applications import Starlette
from starlette.testclient import TestClient

from tollgate_gateway.console.static import console_routes, inline_script_hashes

PAGE = b"""<!DOCTYPE html><html><head><script src="/console/_next/a.js" async=""></script></head>
<body><script>self.__next_f=[]</script><p>hi</p><script>self.__next_f.push([1,"x"])</script>
</body></html>"""


def _sha(script: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"


def _export(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir(parents=True)
    (tmp_path / "_next" / "static").mkdir(parents=True)
    (tmp_path / "index.html").write_bytes(PAGE)
    (tmp_path / "keys" / "index.html").write_bytes(b"<html><body>keys</body></html>")
    (tmp_path / "404.html").write_bytes(b"<html><body>not here</body></html>")
    (tmp_path / "_next" / "static" / "app.js").write_bytes(b"console.log(1)")
    (tmp_path.parent / "secret.txt").write_text("outside")
    return tmp_path


def _client(root: Path) -> TestClient:
    return TestClient(Starlette(routes=console_routes(root)))


def test_inline_script_hashes_cover_only_inline_scripts() -> None:
    hashes = inline_script_hashes(PAGE)
    assert hashes == sorted([_sha(b"self.__next_f=[]"), _sha(b'self.__next_f.push([1,"x"])')])


def test_pages_carry_a_csp_with_their_script_hashes(tmp_path: Path) -> None:
    client = _client(_export(tmp_path / "out"))
    response = client.get("/console/")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert _sha(b"self.__next_f=[]") in csp and "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"


def test_directories_redirect_to_their_slash_and_serve_index(tmp_path: Path) -> None:
    client = _client(_export(tmp_path / "out"))
    bare = client.get("/console", follow_redirects=False)
    assert bare.status_code == 308 and bare.headers["location"] == "/console/"
    keys = client.get("/console/keys", follow_redirects=False)
    assert keys.status_code == 308 and keys.headers["location"] == "/console/keys/"
    assert client.get("/console/keys/").text == "<html><body>keys</body></html>"


def test_hashed_assets_are_immutable(tmp_path: Path) -> None:
    client = _client(_export(tmp_path / "out"))
    response = client.get("/console/_next/static/app.js")
    assert response.status_code == 200
    assert "immutable" in response.headers["cache-control"]
    assert response.headers["content-type"].startswith(
        ("text/javascript", "application/javascript")
    )


def test_paths_never_leave_the_export(tmp_path: Path) -> None:
    client = _client(_export(tmp_path / "out"))
    for path in (
        "/console/../secret.txt",
        "/console/%2e%2e/secret.txt",
        "/console/..%2fsecret.txt",
    ):
        response = client.get(path)
        assert "outside" not in response.text
    assert client.get("/console/nope/").status_code == 404
    assert "not here" in client.get("/console/nope/").text


def test_unbuilt_console_says_how_to_build_it(tmp_path: Path) -> None:
    response = _client(tmp_path / "missing").get("/console/")
    assert response.status_code == 404
    assert "hack/build-console.sh" in response.text
    assert "content-security-policy" in response.headers
