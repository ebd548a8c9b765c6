"""deploy/kubernetes/gemma-server.yaml: the manifest agrees with the image and the server.

No cluster here: the documents are parsed and checked against the Dockerfile (port, user),
the settings the server reads, and what the server's probes mean (README.md, "Operations"):
`/health` is 503 while loading, warming and draining, `/metrics` answers whenever it serves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gemma_server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "gemma-server.yaml"

# GEMMA_SERVER_* variables read outside ServerSettings (as in test_dockerfile.py).
OTHER_ENV = {"GEMMA_SERVER_CACHE", "GEMMA_SERVER_CPU_KERNELS"}

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs() -> dict[str, Doc]:
    """The manifest's documents by kind (each kind once)."""
    found = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    by_kind = {doc["kind"]: doc for doc in found}
    assert len(by_kind) == len(found), "one document per kind"
    return by_kind


@pytest.fixture(scope="module")
def container(docs: dict[str, Doc]) -> Doc:
    (only,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def _dockerfile(keyword: str) -> str:
    """The arguments of the runtime stage's last `keyword` instruction (single-line ones)."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    found = [line.split(None, 1)[1] for line in lines if line.upper().startswith(keyword + " ")]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def _env(container: Doc) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _http_port(container: Doc) -> Doc:
    (port,) = [p for p in container["ports"] if p.get("name") == "http"]
    return port


def _targets_http(probe: Doc, container: Doc) -> bool:
    return probe["httpGet"]["port"] in ("http", _http_port(container)["containerPort"])


def test_kinds(docs: dict[str, Doc]):
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= docs.keys()
    assert docs["Deployment"]["spec"]["replicas"] >= 2


def test_container_port_is_the_image_port(container: Doc):
    port = _http_port(container)["containerPort"]
    assert port == int(_dockerfile("EXPOSE")) == 8000
    assert int(_env(container).get("GEMMA_SERVER_PORT", port)) == port


def test_readiness_and_startup_probe_health(container: Doc):
    for kind in ("readinessProbe", "startupProbe"):
        probe = container[kind]
        assert probe["httpGet"]["path"] == "/health", kind
        assert probe["httpGet"].get("scheme", "HTTP") == "HTTP", kind
        assert _targets_http(probe, container), kind
    startup = container["startupProbe"]
    start_period = re.search(r"--start-period=(\d+)s", _dockerfile("HEALTHCHECK"))
    assert start_period, "the Dockerfile's health check names its start period"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= int(start_period.group(1)), (
        "the start-up budget must cover loading and compiling, as the image's does")


def test_readiness_turns_before_the_drain_ends(container: Doc):
    ready = container["readinessProbe"]
    detected = ready.get("periodSeconds", 10) * ready.get("failureThreshold", 3)
    assert detected < float(_env(container)["GEMMA_SERVER_SHUTDOWN_TIMEOUT"])


def test_liveness_survives_a_drain(container: Doc):
    probe = container["livenessProbe"]
    if "httpGet" in probe:
        assert probe["httpGet"]["path"] == "/metrics", "a route that answers while draining"
        assert _targets_http(probe, container)
    else:
        assert probe["tcpSocket"]["port"] in ("http", _http_port(container)["containerPort"])
    assert "/health" not in yaml.safe_dump(probe)


def test_grace_period_exceeds_the_shutdown_timeout(docs: dict[str, Doc], container: Doc):
    grace = docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(_env(container)["GEMMA_SERVER_SHUTDOWN_TIMEOUT"])


def test_slow_start_means_surge_before_removal(docs: dict[str, Doc]):
    rolling = docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxUnavailable": 0, "maxSurge": 1}


def test_resources(container: Doc):
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]


def test_runs_as_the_image_user(docs: dict[str, Doc], container: Doc):
    pod = docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    user = _dockerfile("USER").split(":")[0]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == int(user) == 1000
    assert pod["fsGroup"] == 1000
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_writable_paths_are_volumes(docs: dict[str, Doc], container: Doc):
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert mounts["/models"]["readOnly"] is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["readOnly"] is True
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert {"/cache", "/tmp"} <= mounts.keys()
    checkpoint = _env(container)["GEMMA_SERVER_CHECKPOINT"]
    assert checkpoint.startswith("/models/")


def test_service_reaches_the_pods(docs: dict[str, Doc], container: Doc):
    service = docs["Service"]["spec"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert service["selector"].items() <= labels.items()
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] in ("http", _http_port(container)["containerPort"])


def test_disruption_budget_covers_the_pods(docs: dict[str, Doc]):
    budget = docs["PodDisruptionBudget"]["spec"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    if "minAvailable" in budget:  # must still let a node drain evict one pod
        assert budget["minAvailable"] < docs["Deployment"]["spec"]["replicas"]
    else:
        assert budget["maxUnavailable"] >= 1


def test_metrics_are_scraped(docs: dict[str, Doc], container: Doc):
    notes = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) == _http_port(container)["containerPort"]


def test_environment_variables_are_settings_the_server_reads(container: Doc):
    # Names in comments too: a commented-out variable is an instruction to the reader.
    names = set(re.findall(r"GEMMA_SERVER_[A-Z0-9_]+", MANIFEST.read_text()))
    assert set(_env(container)) <= names
    fields = {f"GEMMA_SERVER_{name.upper()}" for name in ServerSettings.model_fields}
    assert names - fields - OTHER_ENV == set()
    assert {"GEMMA_SERVER_LOG_FORMAT", "GEMMA_SERVER_SHUTDOWN_TIMEOUT"} <= fields
