"""deploy/k8s: every manifest parses and passes a small hand-written schema check per kind.

(kubeconform isn't available here; when kubectl is, ``kubectl kustomize`` renders the folder.)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from shardchat.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "shardchat"
SETTING_NAMES = {f"SHARDCHAT_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}

API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "Ingress": "networking.k8s.io/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
}

Obj = dict[str, Any]


def _load() -> list[Obj]:
    docs: list[Obj] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), path
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


DOCS = _load()


def _by_kind(kind: str) -> dict[str, Obj]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def _pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def test_expected_objects() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    for expected in [
        ("Namespace", "shardchat"),
        ("ConfigMap", "shardchat-config"),
        ("Secret", "shardchat-secrets"),
        ("Job", "shardchat-migrate"),
        ("Deployment", "edge"),
        ("Deployment", "router"),
        ("Deployment", "gateway"),
        ("Service", "edge"),
        ("Service", "router"),
        ("Service", "gateway"),
        ("Ingress", "shardchat"),
        ("HorizontalPodAutoscaler", "gateway"),
        ("PodDisruptionBudget", "gateway"),
    ]:
        assert expected in kinds, expected


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['__file__']}:{d['kind']}")
def test_common_fields(doc: Obj) -> None:
    kind = doc["kind"]
    assert kind in API_VERSIONS, kind
    assert doc["apiVersion"] == API_VERSIONS[kind]
    meta = doc["metadata"]
    assert isinstance(meta.get("name"), str) and meta["name"]
    if kind != "Namespace":
        assert meta.get("namespace") == NAMESPACE


def _check_pod(obj: Obj) -> None:
    pod = _pod_spec(obj)
    containers = pod["containers"]
    assert containers
    for c in containers:
        assert c["name"] and c["image"]
        image = c["image"]
        assert "." not in image.split("/")[0] or "/" not in image  # plain image names
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                port = c[probe]["httpGet"]["port"]
                assert port in ports or port in ports.values(), (obj["metadata"]["name"], probe)
        refs = {next(iter(r.values()))["name"] for r in c.get("envFrom", [])}
        assert {"shardchat-config", "shardchat-secrets"} <= refs
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_deployments() -> None:
    ports = {"edge": 8080, "router": 8082, "gateway": 8081}
    for name, dep in _by_kind("Deployment").items():
        spec = dep["spec"]
        match = spec["selector"]["matchLabels"]
        labels = spec["template"]["metadata"]["labels"]
        assert match and match.items() <= labels.items(), name
        _check_pod(dep)
        (c,) = _pod_spec(dep)["containers"]
        assert c["args"] == [name]
        assert [p["containerPort"] for p in c["ports"]] == [ports[name]]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports[name])


def test_gateway_drains_before_stop() -> None:
    gw = _by_kind("Deployment")["gateway"]
    pod = _pod_spec(gw)
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["SHARDCHAT_GATEWAY_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    hook = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "/drain/" in hook and "POD_NAME" in hook and 'method="POST"' in hook
    wait = int(env["DRAIN_WAIT_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] >= wait + 30
    # the preStop script is valid Python
    compile(c["lifecycle"]["preStop"]["exec"]["command"][-1], "preStop", "exec")


def test_services_select_deployments() -> None:
    deployments = _by_kind("Deployment")
    for name, svc in _by_kind("Service").items():
        selector = svc["spec"]["selector"]
        dep = deployments[name]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        (c,) = _pod_spec(dep)["containers"]
        port_names = {p["name"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert isinstance(port["port"], int)
            assert port["targetPort"] in port_names


def test_ingress_routes() -> None:
    services = _by_kind("Service")
    ingress = _by_kind("Ingress")["shardchat"]
    routes: dict[str, str] = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["pathType"] in ("Prefix", "Exact", "ImplementationSpecific")
            backend = path["backend"]["service"]
            svc = services[backend["name"]]
            assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
            routes[path["path"]] = backend["name"]
    assert routes == {"/ws": "gateway", "/graphql": "edge", "/gateway": "edge", "/": "edge"}


def test_hpa_and_pdb_target_gateways() -> None:
    hpa = _by_kind("HorizontalPodAutoscaler")["gateway"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])
    assert "shardchat_gateway_connections" in (K8S / "gateway.yaml").read_text()
    pdb = _by_kind("PodDisruptionBudget")["gateway"]["spec"]
    assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb)
    gw_labels = _by_kind("Deployment")["gateway"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= gw_labels.items()


def test_migrate_job() -> None:
    job = _by_kind("Job")["shardchat-migrate"]
    _check_pod(job)
    pod = _pod_spec(job)
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert pod["containers"][0]["args"] == ["migrate"]
    assert job["spec"]["backoffLimit"] >= 1


def test_config_keys_are_settings() -> None:
    config = _by_kind("ConfigMap")["shardchat-config"]["data"]
    secret = _by_kind("Secret")["shardchat-secrets"]["stringData"]
    for key, value in {**config, **secret}.items():
        assert key in SETTING_NAMES, key
        assert isinstance(value, str) and value != "", key  # ConfigMap values are strings
    assert set(config).isdisjoint(secret)
    from shardchat.config import load_settings

    settings = load_settings(env={**config, **secret})
    assert settings.store == "postgres" and settings.registry == "redis"


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_kubectl_kustomize_renders() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed")
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(rendered) == len(DOCS)
