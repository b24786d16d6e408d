"""docker-compose.yml as Docker Compose itself reads it (the `docker-compose` binary, which validates
against the Compose Specification schema and needs no engine for `config`): valid in every profile, and
with the services, profiles, ports and settings that docs/deployment.md describes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import (
    COMPOSE_FILE,
    DEPLOY,
    ROOT,
    check_settings,
    compose_config,
    compose_environment,
    container_command,
    featureserve_environment,
    tool,
)

FEATURESERVE_SERVICES = {"featureserve": None, "featureserve-gpu": "gpu", "featureserve-replicas": "scale"}


@pytest.mark.parametrize("profiles", [(), ("gpu",), ("scale",), ("gpu", "scale")], ids=str)
def test_compose_validates_it(profiles: tuple[str, ...]) -> None:
    arguments = [tool("docker-compose"), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        arguments += ["--profile", profile]
    result = subprocess.run(
        [*arguments, "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=compose_environment(),
    )
    assert result.returncode == 0, result.stderr


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    # A control: the same check fails on an unknown service key, so a pass above means something.
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    broken.write_text(text.replace("    profiles: [gpu]\n", "    profiles: [gpu]\n    gpus_: all\n"))
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=compose_environment(),
    )
    assert result.returncode != 0 and "gpus_" in result.stderr


def test_plain_up_brings_featureserve_prometheus_and_grafana() -> None:
    assert set(compose_config()["services"]) == {"featureserve", "prometheus", "grafana"}


def test_grafana_has_no_default_admin_password() -> None:
    environment = compose_environment()
    del environment["GRAFANA_ADMIN_PASSWORD"]
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=environment,
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr
    grafana = compose_config(GRAFANA_ADMIN_PASSWORD="s3cret")["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


@pytest.mark.parametrize("profiles", [(), ("gpu", "scale")], ids=str)
def test_ports_are_published_on_loopback_unless_asked(profiles: tuple[str, ...]) -> None:
    def addresses(config: dict) -> set[str]:
        return {p.get("host_ip", "") for s in config["services"].values() for p in s.get("ports", [])}

    assert addresses(compose_config(*profiles)) == {"127.0.0.1"}
    assert addresses(compose_config(*profiles, PUBLISH_ADDRESS="0.0.0.0")) == {"0.0.0.0"}


def seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


def published(service: dict) -> dict[int, int]:
    """Container port -> host port."""
    return {int(p["target"]): int(p["published"]) for p in service.get("ports", [])}


def test_featureserve_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose_config("gpu", "scale")["services"]
    _, image_env = container_command()
    container_ports = {int(image_env["FEATURESERVE_REST_PORT"]), int(image_env["FEATURESERVE_GRPC_PORT"])}
    for name, profile in FEATURESERVE_SERVICES.items():
        service = services[name]
        assert service.get("profiles", [None]) == [profile], name
        assert Path(service["build"]["context"]) == ROOT and service["build"]["dockerfile"] == "Dockerfile"
        check_settings(service["environment"], monkeypatch)
        drain = float(service["environment"].get("FEATURESERVE_DRAIN_TIMEOUT_S", 30))
        assert seconds(service["stop_grace_period"]) > drain, f"{name}: Docker would SIGKILL a drain"

    cpu, gpu, replicas = (services[name] for name in FEATURESERVE_SERVICES)
    assert cpu["build"]["args"] == {"VARIANT": "cpu"} and cpu["image"].endswith(":cpu")
    assert set(published(cpu)) == container_ports
    assert gpu["build"]["args"] == {"VARIANT": "cuda"} and gpu["image"].endswith(":cuda")
    assert set(published(gpu)) == container_ports
    assert gpu["environment"]["FEATURESERVE_DEVICES"] == '["cuda:0"]'
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] >= 1
    # Replicas publish nothing (they could not share host ports); Envoy is their only way in.
    assert replicas["deploy"]["replicas"] >= 2 and "ports" not in replicas


def test_host_ports_do_not_collide() -> None:
    services = compose_config("gpu", "scale")["services"]
    host_ports = [port for service in services.values() for port in published(service).values()]
    assert len(host_ports) == len(set(host_ports)), sorted(host_ports)


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    return {v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"}


def test_bind_mounts_exist_and_configs_land_where_the_tools_look() -> None:
    services = compose_config("gpu", "scale")["services"]
    for name, service in services.items():
        for target, source in mounts(service).items():
            # A missing source would make Docker create an empty folder in its place.
            assert source.exists(), f"{name}: {source} (for {target}) does not exist"

    envoy = services["envoy"]
    assert envoy["profiles"] == ["scale"]
    config_path = envoy["command"][envoy["command"].index("--config-path") + 1]
    assert mounts(envoy)[config_path] == DEPLOY / "envoy" / "envoy.yaml"
    listeners = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())["static_resources"]["listeners"]
    assert set(published(envoy)) == {listener["address"]["socket_address"]["port_value"] for listener in listeners}

    prometheus = services["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert mounts(prometheus)[config_file] == DEPLOY / "prometheus" / "prometheus.yml"

    grafana = services["grafana"]
    assert mounts(grafana)["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/featureserve.yml").read_text())
    dashboards = providers["providers"][0]["options"]["path"]
    assert mounts(grafana)[dashboards] == DEPLOY / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).relative_to(dashboards)).is_file()


def test_envoy_image_is_the_envoy_the_tests_run() -> None:
    version = subprocess.run([tool("envoy"), "--version"], capture_output=True, text=True, timeout=60).stdout
    major_minor = re.search(r"/(\d+\.\d+)\.\d+/", version).group(1)
    image = compose_config("scale")["services"]["envoy"]["image"]
    assert re.fullmatch(rf"envoyproxy/envoy:v{re.escape(major_minor)}\.\d+", image), (image, version)


def test_same_settings_as_kubernetes() -> None:
    compose_env = featureserve_environment(compose_config()["services"]["featureserve"]["environment"])
    configmap = yaml.safe_load((DEPLOY / "k8s" / "base" / "configmap.yaml").read_text())
    assert compose_env == configmap["data"]
