"""Kubernetes manifests, rendered by kubectl's own kustomize (`kubectl kustomize`, offline) and checked
against the Kubernetes API schemas in strict mode with kubernetes-validate (unknown fields are errors, as
with kubeconform -strict), then read for what docs/deployment.md promises."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    check_settings,
    compose_config,
    container_command,
    dockerfile_stages,
    load_yaml_documents,
    tool,
)

K8S = DEPLOY / "k8s"
VARIANTS = ["cpu", "gpu"]
# The oldest Kubernetes still in wide use and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
NOT_MANIFESTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}


@functools.cache
def kustomize(variant: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(variant: str) -> list[dict]:
    """The manifests of ``deploy/k8s/<variant>`` as `kubectl apply -k` would send them."""
    return [doc for doc in yaml.safe_load_all(kustomize(variant)) if doc]


def by_kind(documents: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_pass_the_api_schemas(variant: str, version: str) -> None:
    documents = render(variant)
    for doc in documents:
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "featureserve"
    assert set(by_kind(documents)) == {
        ("ConfigMap", "featureserve-config"),
        ("ConfigMap", "featureserve-envoy"),
        ("Service", "featureserve"),
        ("Service", "featureserve-replicas"),
        ("Service", "featureserve-lb"),
        ("Deployment", "featureserve"),
        ("Deployment", "featureserve-envoy"),
        ("PodDisruptionBudget", "featureserve"),
        ("HorizontalPodAutoscaler", "featureserve"),
    }


def test_strict_schemas_catch_a_misspelt_field() -> None:
    # A control: the same check rejects a probe with a misspelt field, so a pass above means something.
    deployment = by_kind(render("cpu"))[("Deployment", "featureserve")]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="pathh"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_manifest_file_is_part_of_a_variant() -> None:
    rendered = set(by_kind(render("cpu"))) | set(by_kind(render("gpu")))
    for path in K8S.rglob("*.yaml"):
        if path.name not in NOT_MANIFESTS:
            assert set(by_kind(load_yaml_documents(path))) <= rendered, f"{path} is in no kustomization"


def server(variant: str) -> tuple[dict, dict]:
    """The featureserve Deployment of a variant and its container."""
    deployment = by_kind(render(variant))[("Deployment", "featureserve")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_deployment(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    documents = by_kind(render(variant))
    deployment, container = server(variant)
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    _, image_env = container_command()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(image_env["FEATURESERVE_REST_PORT"]), "grpc": int(image_env["FEATURESERVE_GRPC_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    # The pod runs as the image's non-root user, and the kubelet waits out preStop plus the whole drain.
    security = pod["spec"]["securityContext"]
    image_user = dockerfile_stages()[-1].last("USER").value[0].split(":")
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == image_user[0]
    config = documents[("ConfigMap", "featureserve-config")]["data"]
    env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])}}
    check_settings(env, monkeypatch)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env.get("FEATURESERVE_DRAIN_TIMEOUT_S", 30))
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain

    resources = container["resources"]
    if variant == "gpu":
        assert container["image"].endswith(":cuda") and env["FEATURESERVE_DEVICES"] == '["cuda:0"]'
        assert int(resources["requests"]["nvidia.com/gpu"]) == int(resources["limits"]["nvidia.com/gpu"]) == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    else:
        assert container["image"].endswith(":cpu")
        assert not any("nvidia.com/gpu" in r for r in resources.values())


def test_gpu_deployment_is_the_cpu_one_plus_what_gpus_need() -> None:
    cpu, gpu = (server(variant)[0] for variant in VARIANTS)
    for deployment in (cpu, gpu):
        pod = deployment["spec"]["template"]["spec"]
        pod.pop("tolerations", None)
        for key in ("image", "resources", "env"):
            pod["containers"][0].pop(key, None)
    assert cpu == gpu


@pytest.mark.parametrize("variant", VARIANTS)
def test_autoscaler(variant: str) -> None:
    hpa = by_kind(render(variant))[("HorizontalPodAutoscaler", "featureserve")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "featureserve"}
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    if variant == "cpu":
        # Utilization is relative to the request, so the container must request CPU.
        assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
        assert "cpu" in server(variant)[1]["resources"]["requests"]
    else:
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "featureserve_queue_depth"


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_and_disruption_budget_reach_the_pods(variant: str) -> None:
    documents = by_kind(render(variant))
    pods = {name: d["spec"]["template"] for (kind, name), d in documents.items() if kind == "Deployment"}
    for (kind, name), doc in documents.items():
        if kind not in ("Service", "PodDisruptionBudget"):
            continue
        selector = doc["spec"]["selector"].get("matchLabels", doc["spec"]["selector"])
        targets = [p for p in pods.values() if selector.items() <= p["metadata"]["labels"].items()]
        assert len(targets) == 1, f"{kind} {name} selects {len(targets)} Deployments"
        container_ports = {p["name"] for c in targets[0]["spec"]["containers"] for p in c["ports"]}
        for port in doc["spec"].get("ports", []):
            assert port["targetPort"] in container_ports, (name, port)


def test_envoy_config_and_its_dns_name() -> None:
    documents = by_kind(render("cpu"))
    # The ConfigMap carries deploy/envoy/envoy.yaml unchanged: copy the file into it after every change.
    configmap = documents[("ConfigMap", "featureserve-envoy")]["data"]["envoy.yaml"]
    assert configmap == (DEPLOY / "envoy" / "envoy.yaml").read_text()
    envoy = yaml.safe_load(configmap)
    upstreams = {
        (a["address"], a["port_value"])
        for cluster in envoy["static_resources"]["clusters"]
        for group in cluster["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
        for a in [e["endpoint"]["address"]["socket_address"]]
    }
    headless = documents[("Service", "featureserve-replicas")]
    assert headless["spec"]["clusterIP"] == "None"
    assert upstreams == {(headless["metadata"]["name"], p["port"]) for p in headless["spec"]["ports"]}
    # The same name is the compose service of the replicas, so one Envoy config serves both.
    assert headless["metadata"]["name"] in compose_config("scale")["services"]

    proxy = documents[("Deployment", "featureserve-envoy")]["spec"]["template"]["spec"]
    (container,) = proxy["containers"]
    assert container["image"] == compose_config("scale")["services"]["envoy"]["image"]
    config_path = Path(container["args"][container["args"].index("--config-path") + 1])
    (mount,) = container["volumeMounts"]
    assert Path(mount["mountPath"]) / "envoy.yaml" == config_path
    volume = next(v for v in proxy["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "featureserve-envoy"
    listener_ports = {
        listener["address"]["socket_address"]["port_value"] for listener in envoy["static_resources"]["listeners"]
    }
    assert {p["containerPort"] for p in container["ports"]} == listener_ports


def test_kustomizations_list_existing_files() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists(), (kustomization, resource)
    # Images are named without a registry so that `kustomize edit set image` can point them anywhere.
    for variant in VARIANTS:
        assert re.fullmatch(r"featureserve:(cpu|cuda)", server(variant)[1]["image"])
