"""Prometheus and Grafana: the scrape config finds every featureserve service of the compose file, and each
dashboard query parses as PromQL (promql-parser) and asks only for metrics and labels that the image's
command really exports, read from its /metrics after some REST and gRPC traffic."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from urllib.parse import urlparse

import httpx
import numpy as np
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from featureserve.client import GrpcClient
from tests.conftest import encode
from tests.deploy.conftest import DEPLOY, Container, compose_config, container_command

PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "featureserve.json").read_text())
DATASOURCES = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
# Labels that Prometheus adds to every series it scrapes (job, instance) or that the scrape config adds.
TARGET_LABELS = {"job", "instance", "service"}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def test_prometheus_scrapes_every_featureserve_service() -> None:
    (job,) = PROMETHEUS["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    services = compose_config("gpu", "scale")["services"]
    featureserve = {name for name, s in services.items() if s.get("image", "").startswith("featureserve:")}
    assert set(discovery["names"]) == featureserve
    _, image_env = container_command()
    assert discovery["port"] == int(image_env["FEATURESERVE_REST_PORT"])


def test_grafana_uses_the_provisioned_prometheus() -> None:
    (datasource,) = DATASOURCES
    url = urlparse(datasource["url"])
    prometheus = compose_config()["services"]["prometheus"]
    assert url.hostname == "prometheus" and url.port in {int(p["target"]) for p in prometheus["ports"]}
    uids = {p["datasource"]["uid"] for p in DASHBOARD["panels"]}
    uids |= {t["datasource"]["uid"] for p in DASHBOARD["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


def test_dashboard_layout_and_the_panels_the_issue_asks_for() -> None:
    panels = DASHBOARD["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("request rate", "p95 latency by endpoint", "queue depth", "batch size", "keypoints per image"):
        assert wanted in titles
    for wanted in ("matches per pair", "inliers per pair", "inlier ratio"):
        assert wanted in titles
    heatmaps = {p["title"] for p in panels if p["type"] == "heatmap"}
    assert {"Batch size", "Keypoints per image", "Matches per pair", "Inliers per pair"} <= heatmaps


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query, Grafana's variables replaced by durations."""
    found = []
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def selectors_and_labels(expr: str) -> tuple[list[promql_parser.VectorSelector], set[str]]:
    """The vector selectors of a query, and every label name it groups by or matches on."""
    selectors, labels = [], set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
            labels.update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selectors, labels


@pytest.mark.parametrize(("title", "expr"), queries(), ids=[f"{t}:{i}" for i, (t, _) in enumerate(queries())])
def test_dashboard_queries_parse(title: str, expr: str) -> None:
    selectors, _ = selectors_and_labels(expr)
    assert selectors, f"{title}: no metric in {expr}"


@pytest.fixture(scope="module")
def exported(container: Container, photo: np.ndarray) -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values seen on the image command's /metrics, after REST and gRPC calls."""
    png = encode(photo[::2, ::2])
    with httpx.Client(base_url=container.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/extract", files={"image": ("a.png", png)}, data={"model": "orb"}).status_code == 200
        pair = {"image0": ("a.png", png), "image1": ("b.png", png)}
        match = client.post("/v1/match", files=pair, data={"model": "orb", "geometry": "homography"})
        assert match.status_code == 200
        # A deadline no request can meet, so that admission control counts a rejection.
        late = client.post("/v1/extract", files={"image": ("a.png", png)}, headers={"X-Deadline-Ms": "0.01"})
        assert late.status_code in (429, 504)
        with GrpcClient(container.grpc_target) as grpc_client:
            grpc_client.list_models(timeout=10)
        client.get("/metrics")  # counted once answered, so the next scrape shows endpoint="/metrics"
        text = client.get("/metrics").text
    samples: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = samples.setdefault(sample.name, defaultdict(set))
            for label, value in sample.labels.items():
                labels[label].add(value)
    return samples


@pytest.mark.parametrize(("title", "expr"), queries(), ids=[f"{t}:{i}" for i, (t, _) in enumerate(queries())])
def test_dashboard_queries_ask_for_exported_metrics_and_labels(
    title: str, expr: str, exported: dict[str, dict[str, set[str]]]
) -> None:
    selectors, labels = selectors_and_labels(expr)
    job = PROMETHEUS["scrape_configs"][0]["job_name"]
    available = set(TARGET_LABELS)
    for selector in selectors:
        if selector.name == "up":  # Prometheus' own per-target series
            assert {(m.name, m.value) for m in selector.matchers.matchers} == {("job", job)}
            continue
        assert selector.name in exported, f"{title}: {selector.name} is not exported by featureserve"
        available |= set(exported[selector.name])
        for matcher in selector.matchers.matchers:
            if matcher.name == "endpoint":
                # The endpoints a query leaves out or picks must be real ones, or the filter does nothing.
                for endpoint in matcher.value.split("|"):
                    assert endpoint in exported[selector.name]["endpoint"], f"{title}: endpoint {endpoint}"
    assert labels <= available, f"{title}: labels {sorted(labels - available)} do not exist"


def test_autoscaler_metric_is_exported(exported: dict[str, dict[str, set[str]]]) -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "gpu" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    (selector,), _ = selectors_and_labels(rule["seriesQuery"])
    assert selector.name == rule["name"]["as"] and re.fullmatch(rule["name"]["matches"], selector.name)
    assert selector.name in exported and "model" in exported[selector.name]
    hpa = yaml.safe_load((DEPLOY / "k8s" / "gpu" / "hpa.yaml").read_text())
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]
