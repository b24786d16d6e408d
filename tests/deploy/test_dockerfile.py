"""The Dockerfile: hadolint-clean, built as docs/deployment.md says, and fed a build context that holds the package."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

from featureserve.service.settings import Settings
from tests.deploy.conftest import DOCKERFILE, ROOT, dockerfile_stages, exec_form, tool


def hadolint(dockerfile: str) -> list[dict]:
    """hadolint's findings at every level (style included), as JSON."""
    result = subprocess.run(
        [tool("hadolint"), "--format", "json", "--failure-threshold", "style", "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (findings == []), result.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE.read_text()) == []


def test_hadolint_does_lint() -> None:
    # A control: the same call reports a known-bad Dockerfile, so an empty answer above means something.
    codes = {f["code"] for f in hadolint("FROM python:latest\nUSER root\nCMD featureserve serve\n")}
    assert {"DL3007", "DL3002", "DL3025"} <= codes


def test_stages_variant_and_the_lock() -> None:
    text = DOCKERFILE.read_text()
    # A `# syntax=` line makes BuildKit pull a frontend image: a build must pull nothing but its base.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    stages = dockerfile_stages()
    assert [s.name for s in stages] == ["build", "runtime"]
    build, runtime = stages
    args = {}
    for command in build.all("ARG"):
        name, _, default = command.value[0].partition("=")
        args[name] = default
    assert args["VARIANT"] == "cpu" and args["OFFLINE"] == ""
    install_torch = next(c.original for c in build.all("RUN") if "install --no-index torch" in c.original)
    assert re.search(r"\bcpu\)", install_torch) and re.search(r"\bcuda\)", install_torch)
    # Every pip install of the build stage takes its versions from the lock, which the stage copies in.
    env = build.environment({"PATH": ""})
    copied = {c.value[0]: c.value[-1] for c in build.all("COPY")}
    assert "constraints/lock.txt" in copied
    workdir = build.last("WORKDIR").value[0]
    destination = copied["constraints/lock.txt"]
    lock = PurePosixPath(workdir, destination, "lock.txt" if destination.endswith("/") else "")
    assert env["PIP_CONSTRAINT"] == str(lock)
    # wheelhouse/ is where pip looks first, and the only place with OFFLINE=1.
    assert env["PIP_FIND_LINKS"] == "/wheelhouse"
    installs = [c.original for c in build.all("RUN") if "pip install" in c.original]
    assert installs and all("source=wheelhouse,target=/wheelhouse" in c for c in installs)
    # The image's CPU torch is the version the CPU machines pin, so tests here and the image agree.
    pin = re.search(r"^torch==(\S+)$", (ROOT / "constraints" / "cpu.txt").read_text(), re.M).group(1)
    assert re.search(r"^torch==(\S+)$", (ROOT / "constraints" / "lock.txt").read_text(), re.M).group(1) == pin
    # The runtime stage takes the built environment from the build stage, and nothing from the context.
    assert all("--from=build" in c.flags for c in runtime.all("COPY"))


def test_the_lock_pins_this_environment() -> None:
    # scripts/install.sh installs with --constraint constraints/lock.txt: every package of the environment
    # running these tests is in the lock at the same version (a package missing from the lock, or a lock not
    # regenerated after pyproject.toml changed, fails here).
    lock = dict(
        line.split("==")
        for line in (ROOT / "constraints" / "lock.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    installed = {
        re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version.split("+")[0]
        for d in importlib.metadata.distributions()
        # What the virtual environment comes with, left out as `pip freeze` leaves it out.
        if d.metadata["Name"] not in {"featureserve", "pip", "setuptools", "wheel"}
    }
    locked = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in lock.items()}
    assert {name: v for name, v in installed.items() if locked.get(name) != v} == {}


def test_runtime_stage_runs_as_non_root_and_is_configured_by_environment() -> None:
    runtime = dockerfile_stages()[-1]
    user = runtime.last("USER").value[0]
    assert re.fullmatch(r"\d+(:\d+)?", user) and int(user.split(":")[0]) >= 1000, user
    env = runtime.environment({"PATH": ""})
    assert env["FEATURESERVE_HOST"] == "0.0.0.0"
    known = {f"FEATURESERVE_{name.upper()}" for name in Settings.model_fields}
    assert {key for key in env if key.startswith("FEATURESERVE_")} <= known
    exposed = {int(port.split("/")[0]) for c in runtime.all("EXPOSE") for port in c.value}
    assert exposed == {int(env["FEATURESERVE_REST_PORT"]), int(env["FEATURESERVE_GRPC_PORT"])}
    healthcheck = exec_form(runtime.last("HEALTHCHECK"))
    assert "/readyz" in healthcheck[-1]
    assert runtime.last("STOPSIGNAL").value == ("SIGTERM",)
    exec_form(runtime.last("ENTRYPOINT"))
    exec_form(runtime.last("CMD"))


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (moby's patternmatcher rules).

    Patterns apply in order and the last one that matches the path or one of its parent folders wins;
    ``!`` re-includes; ``*`` and ``?`` stay within one path element and ``**`` spans any number of them.
    """
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        include = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not include
    return ignored


def pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_build_context_holds_the_package_and_its_checkpoints_and_nothing_else() -> None:
    patterns = dockerignore_patterns()
    tracked = subprocess.run(
        ["git", "ls-files", "featureserve", "proto"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    checkpoints = [str(p.relative_to(ROOT)) for p in (ROOT / "featureserve/models/checkpoints").glob("**/*")]
    # wheelhouse/ is bind-mounted by the pip installs (empty but for its README unless OFFLINE=1 is meant).
    needed = [*tracked, *checkpoints, "pyproject.toml", "setup.py", "README.md", "wheelhouse/README.md"]
    # Everything the build stage COPYs from the context must be in it.
    copied = [src for c in dockerfile_stages()[0].all("COPY") for src in c.value[:-1]]
    for path in [*needed, *copied]:
        assert not docker_ignored(path, patterns), f"{path} is left out of the build context"
    left_out = [
        ".venv/bin/python",
        ".git/HEAD",
        "training/trainer.py",
        "tests/conftest.py",
        "runs/caps/checkpoint.pt",
        "benchmarks/results/x.md",
        "build/lib/featureserve/__init__.py",
        "featureserve.egg-info/PKG-INFO",
        "featureserve/v1/features_pb2.py",
        "featureserve/v1/service_pb2_grpc.py",
        "featureserve/models/__pycache__/base.cpython-311.pyc",
    ]
    for path in left_out:
        assert docker_ignored(path, patterns), f"{path} would be sent to the Docker build"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def copy_build_context(destination: Path) -> None:
    """Copy what Docker would send as the build context (per .dockerignore) into ``destination``."""
    patterns = dockerignore_patterns()
    reincluded = [p.lstrip("!").split("/")[0] for p in patterns if p.startswith("!")]
    for entry in ROOT.iterdir():
        if docker_ignored(entry.name, patterns) and entry.name not in reincluded:
            continue  # skips .venv and .git without walking them
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        for path in files:
            relative = path.relative_to(ROOT)
            if not docker_ignored(relative.as_posix(), patterns):
                (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination / relative)


def test_build_context_builds_the_package_with_stubs_and_checkpoints(tmp_path: Path) -> None:
    # What the build stage's `pip install .` does, on the files the build context holds: build a wheel
    # (setup.py generates the gRPC stubs), install it, and run it from outside the source tree. Build
    # isolation is off because there is no network in the test; setuptools and grpcio-tools are installed.
    context, wheels, site = tmp_path / "context", tmp_path / "wheels", tmp_path / "site"
    copy_build_context(context)
    assert not list((context / "featureserve" / "v1").glob("*_pb2*"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, context], check=True, timeout=300)
    (wheel,) = wheels.glob("featureserve-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True, timeout=300)
    package = site / "featureserve"
    assert (package / "v1" / "service_pb2_grpc.py").is_file() and not (site / "training").exists()
    checkpoints = ROOT / "featureserve" / "models" / "checkpoints"
    for source in (p for p in checkpoints.glob("**/*") if p.is_file()):
        installed = package / "models" / "checkpoints" / source.relative_to(checkpoints)
        assert installed.read_bytes() == source.read_bytes()
        # The image runs as uid 10001, not as the root that installed the files.
        assert installed.stat().st_mode & stat.S_IROTH, f"{installed.name} is not readable by other users"
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run(
        [sys.executable, "-c", "import featureserve.models, featureserve.v1.service_pb2_grpc as s; print(s.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and Path(listed.stdout.strip()).is_relative_to(site), listed.stderr


def test_checkpoints_are_package_data() -> None:
    # The image installs the package (not the source tree), so a checkpoint reaches it only as package data.
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    models = ROOT / "featureserve" / "models"
    shipped = {p for glob in package_data["featureserve.models"] for p in models.glob(glob) if p.is_file()}
    on_disk = {p for p in (models / "checkpoints").glob("**/*") if p.is_file()}
    assert on_disk <= shipped, sorted(str(p.relative_to(ROOT)) for p in on_disk - shipped)


def test_the_image_needs_no_training_code() -> None:
    # .dockerignore leaves training/ out; the service must therefore never import it.
    for path in (ROOT / "featureserve").rglob("*.py"):
        assert not re.search(r"^\s*(from|import) training\b", path.read_text(), re.M), path
