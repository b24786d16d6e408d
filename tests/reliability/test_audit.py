"""scripts/audit.py fails on a known vulnerability, and says so when it cannot check (a PyPI stand-in here)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit.py"
HTTPX = importlib.metadata.version("httpx")


class FakePyPI(BaseHTTPRequestHandler):
    """``/pypi/<name>/json``: httpx at its installed version with one vulnerability; pytest at an older
    version than the latest; every other project 404."""

    def do_GET(self) -> None:
        name = self.path.split("/")[2]
        if name == "httpx":
            body = {"info": {"version": HTTPX}, "vulnerabilities": [{"id": "TEST-2026-1", "fixed_in": ["99.0"]}]}
        elif name == "pytest":
            body = {"info": {"version": "999.0"}, "vulnerabilities": []}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_pypi() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePyPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/pypi/{{name}}/json"
    server.shutdown()


def _audit(fake_pypi: str, *args: str) -> subprocess.CompletedProcess[str]:
    # pip-audit itself is sent to a closed port: offline, as it is where the vulnerability service is unreachable.
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "FEATURESERVE_AUDIT_PYPI_JSON": fake_pypi,
        "FEATURESERVE_AUDIT_STRICT": "0",
    }
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def test_a_known_vulnerability_fails_and_unchecked_packages_are_listed(fake_pypi: str, tmp_path: Path) -> None:
    done = _audit(fake_pypi, "--out", str(tmp_path / "audit.json"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"VULNERABLE httpx {HTTPX}: TEST-2026-1 (fixed in 99.0)" in done.stdout
    assert "DEPENDENCY AUDIT INCOMPLETE" in done.stdout and "pip-audit failed" in done.stdout
    assert f"pytest {importlib.metadata.version('pytest')}: installed" in done.stdout  # older than the latest
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["packages"]["httpx"]["source"] == "latest-release JSON"
    assert report["summary"]["audited"] == 1 and report["summary"]["vulnerable"] == 1
