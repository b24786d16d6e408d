"""Deployment files read the way their tools read them, and the image's command run outside Docker.

There is no Docker engine here, so the container is reproduced as closely as a process can be: the
ENTRYPOINT and CMD of the Dockerfile's final stage, parsed by BuildKit's own parser (the `dockerfile`
package), with the environment its ENV lines build, in a working directory outside the repository. Only
three things differ from `docker run`: FEATURESERVE_HOST is loopback and the two ports are free ones (the
test shares the machine), and the image's virtual environment (/opt/featureserve) is this checkout's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import httpx
import pytest
import yaml

from benchmarks.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent

# Where the Dockerfile puts the virtual environment; the test maps it onto the one running the tests.
IMAGE_VENV = "/opt/featureserve"
# PATH of the python:3.11-slim base image, which the Dockerfile's ENV PATH=...:$PATH extends.
BASE_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tool(name: str) -> str:
    """A command-line tool installed into this environment by the `test` extra (hadolint, envoy, ...)."""
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is missing: install the test extra (scripts/install.sh test)"
    return path


@dataclass
class Stage:
    """One build stage of the Dockerfile: its instructions in order, as BuildKit's parser returns them."""

    name: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction.upper()]

    def last(self, instruction: str) -> dockerfile.Command:
        found = self.all(instruction)
        assert found, f"stage {self.name} has no {instruction}"
        return found[-1]

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """The environment the stage's ENV lines build on top of ``base``, $VAR and ${VAR} expanded."""
        env = dict(base)
        for command in self.all("ENV"):
            # The values of one ENV line see the environment as it was before that line, as in BuildKit.
            before = dict(env)
            pairs = command.value
            for key, raw in zip(pairs[::2], pairs[1::2], strict=True):
                env[key] = expand(raw, before)
        return env


def expand(word: str, env: dict[str, str]) -> str:
    """A Dockerfile word with surrounding quotes removed and $VAR / ${VAR} replaced from ``env``."""
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        word = word[1:-1]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), word)


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's build stages in order; the last one is the image."""
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            words = command.value
            stages.append(Stage(words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))))
        elif stages:
            stages[-1].commands.append(command)
    return stages


def exec_form(command: dockerfile.Command) -> list[str]:
    """The argv of an exec-form (JSON) ENTRYPOINT, CMD or HEALTHCHECK CMD; fails on shell form."""
    assert command.json, f"{command.original!r} is in shell form: SIGTERM would go to /bin/sh, not featureserve"
    return list(command.value)


@dataclass
class Container:
    """The image's command running as a local process."""

    process: subprocess.Popen
    env: dict[str, str]
    cwd: Path
    url: str
    grpc_target: str

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (what `docker stop` sends), wait, return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def container_command() -> tuple[list[str], dict[str, str]]:
    """ENTRYPOINT + CMD of the image, and the environment ENV gives it (before the loopback changes)."""
    image = dockerfile_stages()[-1]
    argv = exec_form(image.last("ENTRYPOINT")) + exec_form(image.last("CMD"))
    env = image.environment({"PATH": BASE_IMAGE_PATH})
    return argv, env


def start_container(workdir: Path, wait: bool = True, **settings: str) -> Container:
    """Run the image's command with the image's environment; loopback host, free ports; wait for /readyz.

    ``settings`` are more environment variables, as `docker run -e` would add them.
    """
    argv, image_env = container_command()
    env = {key: value.replace(IMAGE_VENV, sys.prefix) for key, value in image_env.items()}
    rest_port, grpc_port = free_port(), free_port()
    env.update(
        FEATURESERVE_HOST="127.0.0.1",
        FEATURESERVE_REST_PORT=str(rest_port),
        FEATURESERVE_GRPC_PORT=str(grpc_port),
        HOME=str(workdir),
        LANG="C.UTF-8",
        **settings,
    )
    # Resolve argv[0] on the container's PATH, as Docker does, so a missing console script fails here.
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable, f"{argv[0]} is not on the image's PATH {env['PATH']}"
    process = subprocess.Popen(
        [executable, *argv[1:]], env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    container = Container(process, env, workdir, f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}")
    if wait:
        wait_ready(container)
    return container


def wait_ready(container: Container, timeout: float = 120) -> None:
    """Poll /readyz until 200; fail with the server's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.process.poll() is not None:
            stderr = container.process.stderr.read().decode()[-3000:]
            raise RuntimeError(f"container command exited with {container.process.returncode}:\n{stderr}")
        try:
            if httpx.get(f"{container.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    container.stop()
    raise RuntimeError(f"container command not ready within {timeout} s")


@pytest.fixture(scope="session")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The image's command, ready, shared by the tests that only read from it."""
    c = start_container(tmp_path_factory.mktemp("container-home"))
    yield c
    c.stop()


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose_environment(**variables: str) -> dict[str, str]:
    """The environment to run Docker Compose in: the compose file requires GRAFANA_ADMIN_PASSWORD."""
    return {**os.environ, "GRAFANA_ADMIN_PASSWORD": "a-test-password", **variables}


def compose_config(*profiles: str, **variables: str) -> dict:
    """The compose file as Docker Compose itself resolves it (anchors, merges, profiles, defaults)."""
    arguments = [tool("docker-compose"), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        arguments += ["--profile", profile]
    result = subprocess.run(
        [*arguments, "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=compose_environment(**variables),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def featureserve_environment(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith("FEATURESERVE_")}


def check_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every FEATURESERVE_* variable is a real setting, and together they pass the service's validation."""
    from featureserve.service.settings import Settings

    known = {f"FEATURESERVE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(set(featureserve_environment(env)) - known)
    assert not unknown, f"not settings of featureserve (a typo is silently ignored by the service): {unknown}"
    with monkeypatch.context() as m:
        for key in [k for k in os.environ if k.startswith("FEATURESERVE_")]:
            m.delenv(key)
        for key, value in featureserve_environment(env).items():
            m.setenv(key, value)
        Settings()
