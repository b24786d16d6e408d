"""The one launcher of real ``featureserve serve`` processes on loopback, shared by the benchmarks and the tests.

`launch` starts a server with the given settings and returns it once ``/readyz`` answers 200; `serving` does
the same as a context manager that always stops it and records what a benchmark reports (the resolved
settings, the start-up time, the checkout's state). Inherited ``FEATURESERVE_*`` variables are dropped, so the
settings in force are the ones given and the defaults. The server's output goes to a log file.
`start_null_server` starts an HTTP server that reads requests and answers nothing: the floor under a round trip.
`stop_during_request` stops a server (a process or a container) while a request is in flight.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

from benchmarks.common import LOOPBACK, REPO_ROOT, git_state, metric_value


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def environment(settings: Mapping[str, Any]) -> dict[str, str]:
    """Service settings by field name as ``FEATURESERVE_*`` variables (lists, dicts and booleans as JSON)."""
    return {
        f"FEATURESERVE_{key.upper()}": json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
        for key, value in settings.items()
    }


def resolved_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Every service setting as a server started with ``env`` sees it (defaults included)."""
    from featureserve.service.settings import Settings

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESERVE_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return Settings().model_dump()


@dataclass
class ServerProcess:
    """A running ``featureserve serve`` subprocess on loopback ports."""

    process: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    env: dict[str, str]
    log_path: Path
    scheme: str = "http"
    startup_s: float = 0.0
    # Every setting as the server sees it (filled by `serving`, for the benchmark's report).
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` when it serves TLS)."""
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:GRPC_PORT``."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def log(self) -> str:
        """Everything the server has written so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log."""
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the service drains), wait, SIGKILL if it does not exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def launch(settings: Mapping[str, Any], ca: str | None = None, ready_timeout_s: float = 120.0) -> ServerProcess:
    """Start a server with ``settings`` (by field name) and wait until it is ready; the caller stops it.

    ``ca``: a PEM file that signed the server's certificate (``tls_cert_file``); it then speaks HTTPS.
    Raises ``RuntimeError`` with the log's tail when the server exits or is not ready in time.
    """
    port, grpc_port = free_port(), free_port()
    env_settings = {
        "FEATURESERVE_HOST": LOOPBACK,
        "FEATURESERVE_REST_PORT": str(port),
        "FEATURESERVE_GRPC_PORT": str(grpc_port),
        **environment(settings),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESERVE_")} | env_settings
    log = tempfile.NamedTemporaryFile(prefix="featureserve-", suffix=".log", delete=False)  # noqa: SIM115
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "featureserve", "serve"],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    server = ServerProcess(process, port, grpc_port, env_settings, Path(log.name), "https" if ca else "http")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    if wait_until_ok(process, f"{server.url}/readyz", ready_timeout_s, verify):
        server.startup_s = time.monotonic() - start
        return server
    if process.poll() is not None:
        raise RuntimeError(f"server exited with {process.returncode}; log tail:\n{server.log_tail()}")
    server.stop()
    raise RuntimeError(f"server not ready after {ready_timeout_s:.0f} s; log tail:\n{server.log_tail()}")


def wait_until_ok(process: subprocess.Popen, url: str, timeout_s: float, verify: ssl.SSLContext | bool = True) -> bool:
    """Poll ``url`` until it answers 200 (True), or ``process`` exits or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False, verify=verify) as client:
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return True
            time.sleep(0.1)
    return False


@contextlib.contextmanager
def serving(
    models: Sequence[str],
    default_model: str | None = None,
    settings: Mapping[str, Any] | None = None,
    ready_timeout_s: float = 180.0,
) -> Iterator[ServerProcess]:
    """A benchmark's server: `launch` with ``models``, quiet logs and ``settings``; always stopped and cleaned up.

    ``server.settings`` holds the resolved settings; ``server.extra`` the checkout's state when it started and
    the exit code.
    """
    chosen = {
        "models": list(models),
        "default_model": default_model or models[0],
        "log_level": "warning",
        **(settings or {}),
    }
    server = launch(chosen, ready_timeout_s=ready_timeout_s)
    server.settings = resolved_settings(server.env)
    # The server imported the code as it was now; a checkout edited during a long run shows up here.
    server.extra["git"] = git_state()
    try:
        yield server
    finally:
        code = server.stop()
        server.extra["exit_code"] = code
        if code not in (0, -signal.SIGTERM):
            print(f"warning: server exited with code {code}; log tail:\n{server.log_tail()}", file=sys.stderr)
        with contextlib.suppress(OSError):
            server.log_path.unlink()


@dataclass
class StopDuringRequest:
    """What `stop_during_request` saw: the exit code, the request's answer (or its error) and the stop's seconds."""

    exit_code: int | None
    answer: httpx.Response | BaseException | None
    stop_s: float


def stop_during_request(
    url: str, image: bytes, stop: Callable[[], int | None], model: str = "sift"
) -> StopDuringRequest:
    """Run ``stop`` (SIGTERM to a process, `docker stop`, ...; it returns the exit code) while a REST extraction of
    ``image`` with ``model`` is in flight: once the server's metrics count it, or after 30 s at most."""
    answers: list[httpx.Response | BaseException] = []

    def post() -> None:
        try:
            files, fields = {"image": ("x.png", image)}, {"model": model}
            answers.append(httpx.post(f"{url}/v1/extract", files=files, data=fields, timeout=60))
        except BaseException as error:  # the caller checks the answer
            answers.append(error)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not answers:
        metrics = httpx.get(f"{url}/metrics").text
        if metric_value(metrics, "featureserve_in_flight_requests", endpoint="/v1/extract") >= 1:
            break
        time.sleep(0.01)
    started = time.monotonic()
    exit_code = stop()
    stop_s = time.monotonic() - started
    thread.join(60)
    return StopDuringRequest(exit_code, answers[0] if answers else None, stop_s)


class _NullHandler(BaseHTTPRequestHandler):
    """Reads the whole body, answers ``X-Reply-Bytes`` bytes (2 by default); HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY the separate header and body writes meet delayed ACKs: ~40 ms per small reply.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        remaining = int(self.headers.get("content-length", "0"))
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        reply = b" " * max(2, int(self.headers.get("x-reply-bytes", "2")))
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_null(port: int) -> None:
    with ThreadingHTTPServer((LOOPBACK, port), _NullHandler) as httpd:
        httpd.serve_forever()


@contextlib.contextmanager
def start_null_server(ready_timeout_s: float = 20.0) -> Iterator[str]:
    """Start the null server (``python -m benchmarks.servers null-server``) on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.servers", "null-server", "--port", str(port)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"null server exited with code {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("null server did not start")
            time.sleep(0.05)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Server helpers; run as the null HTTP server.")
    commands = parser.add_subparsers(dest="command", required=True)
    null = commands.add_parser("null-server", help="HTTP server that reads the body and answers nothing")
    null.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "null-server":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _serve_null(args.port)


if __name__ == "__main__":
    _main()
