"""docker-compose.yml and deploy/docker/Dockerfile: structure checks (no Docker engine needed).

When the ``docker-compose`` binary (Debian package ``docker-compose``) or the compose plugin is
installed, ``config`` is run too; that needs no engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from shardchat.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SETTING_NAMES = {f"SHARDCHAT_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}
ONE_SHOT = {"migrate", "kafka-init"}
SHARDCHAT_SERVICES = {"edge": 8080, "gateway": 8081, "router": 8082}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _labels(service: dict[str, Any]) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    return {str(k): str(v) for k, v in labels.items()}


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "postgres", "redis", "kafka", "kafka-init", "minio", "migrate", "edge", "router",
        "gateway", "traefik", "prometheus", "grafana",
    }  # fmt: skip
    assert expected <= set(services)


def test_every_long_running_service_has_healthcheck_and_restart(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
            continue
        assert svc.get("restart") == "unless-stopped", name
        check = svc.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), name


def test_images_are_plain_names(services: dict[str, dict[str, Any]]) -> None:
    images = {name: svc["image"] for name, svc in services.items()}
    assert images["postgres"].startswith("postgres:16")
    assert images["redis"].startswith("redis:7")
    assert images["kafka"].startswith("apache/kafka:4.")
    assert images["traefik"].startswith("traefik:v3")
    for name, image in images.items():
        first = image.split("/")[0]
        # a registry host has a dot or a port in its first path component
        assert "/" not in image or ("." not in first and ":" not in first), (name, image)


def test_shardchat_services_commands_ports_and_health(services: dict[str, dict[str, Any]]) -> None:
    for name, port in SHARDCHAT_SERVICES.items():
        svc = services[name]
        assert svc["command"] == [name]
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        env = _env(svc)
        assert env[f"SHARDCHAT_{name.upper()}_PORT"] == str(port)
        assert env["SHARDCHAT_HOST"] == "0.0.0.0"
        test = " ".join(svc["healthcheck"]["test"])
        assert "python" in test and f"127.0.0.1:{port}/healthz" in test
    assert services["migrate"]["command"] == ["migrate"]


def test_adapters_point_at_compose_hosts(services: dict[str, dict[str, Any]]) -> None:
    for name in (*SHARDCHAT_SERVICES, "migrate"):
        env = _env(services[name])
        assert env["SHARDCHAT_STORE"] == "postgres"
        assert env["SHARDCHAT_EVENT_LOG"] == "kafka"
        assert env["SHARDCHAT_REGISTRY"] == "redis"
        assert "@postgres:5432/" in env["SHARDCHAT_POSTGRES_DSN"]
        assert env["SHARDCHAT_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["SHARDCHAT_REDIS_URL"].startswith("redis://redis:6379")
        assert env["SHARDCHAT_OBJECT_STORE"] == "s3"
        assert env["SHARDCHAT_S3_ENDPOINT"] == "http://minio:9000"


def test_minio_is_the_object_store(services: dict[str, dict[str, Any]]) -> None:
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    assert minio["command"][:2] == ["server", "/data"]
    assert "mc ready local" in " ".join(minio["healthcheck"]["test"])
    env, gateway = _env(minio), _env(services["gateway"])
    # the services sign with the credentials MinIO was started with
    assert env["MINIO_ROOT_USER"] == gateway["SHARDCHAT_S3_ACCESS_KEY"]
    assert env["MINIO_ROOT_PASSWORD"] == gateway["SHARDCHAT_S3_SECRET_KEY"]
    # presigned URLs name the published port, which browsers reach
    published = minio["ports"][0].rsplit(":", 1)
    assert published[1] == "9000" and "localhost:9000" in gateway["SHARDCHAT_S3_PUBLIC_ENDPOINT"]


def test_every_shardchat_env_var_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for key in _env(svc):
            if key.startswith("SHARDCHAT_"):
                assert key in SETTING_NAMES, (name, key)


def test_settings_from_compose_env_load(services: dict[str, dict[str, Any]]) -> None:
    from shardchat.config import load_settings

    default = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")  # what compose puts in when a var is unset
    env = {k: default.sub(r"\1", v) for k, v in _env(services["gateway"]).items()}
    settings = load_settings(env=env)
    assert settings.store == "postgres" and settings.event_log == "kafka"
    assert settings.object_store == "s3" and settings.s3_public_endpoint == "http://localhost:9000"
    assert settings.gateway_port == 8081
    assert settings.jwt_keys  # the JSON table parsed


def test_replicas(services: dict[str, dict[str, Any]]) -> None:
    assert services["gateway"]["deploy"]["replicas"] == 3
    assert services["edge"]["deploy"]["replicas"] == 2


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, spec in deps.items():
            assert dep in services, (name, dep)
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec == {"condition": want}, (name, dep, spec)
    for name in ("edge", "gateway"):
        deps = services[name]["depends_on"]
        assert {"migrate", "kafka-init", "postgres", "redis", "kafka", "minio"} <= set(deps), name
    assert "postgres" in services["migrate"]["depends_on"]


def test_kafka_topic_matches_partitions(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["gateway"])
    cmd = " ".join(services["kafka-init"]["command"])
    assert f"--topic {env['SHARDCHAT_KAFKA_TOPIC']}" in cmd
    assert f"--partitions {env['SHARDCHAT_KAFKA_PARTITIONS']}" in cmd
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])


def test_traefik_routes(services: dict[str, dict[str, Any]]) -> None:
    edge, gateway = _labels(services["edge"]), _labels(services["gateway"])
    assert edge["traefik.enable"] == gateway["traefik.enable"] == "true"
    edge_rule = edge["traefik.http.routers.edge.rule"]
    for path in ("/graphql", "/gateway", "/"):
        assert f"`{path}`" in edge_rule
    assert gateway["traefik.http.routers.gateway.rule"] == "PathPrefix(`/ws`)"
    # /ws must win over the edge's catch-all
    assert int(gateway["traefik.http.routers.gateway.priority"]) > int(
        edge["traefik.http.routers.edge.priority"]
    )
    assert edge["traefik.http.services.edge.loadbalancer.server.port"] == "8080"
    assert gateway["traefik.http.services.gateway.loadbalancer.server.port"] == "8081"
    assert not any("sticky" in key for key in gateway)  # sessions resume anywhere
    traefik = yaml.safe_load((ROOT / "deploy" / "traefik" / "traefik.yml").read_text())
    assert traefik["providers"]["docker"]["exposedByDefault"] is False
    assert "web" in traefik["entryPoints"]


def test_observability_mounts(services: dict[str, dict[str, Any]]) -> None:
    for svc in ("traefik", "prometheus", "grafana"):
        for volume in services[svc].get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), (svc, src)


def _compose_plugin() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


def test_compose_config_with_binary() -> None:
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE), "config", "-q"]
    elif _compose_plugin():
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}

    def config(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
            env={**env, **extra},
        )  # fmt: skip

    # issue 11, observation 5: no fixed fallback secret any more; it must be given
    missing = config({})
    assert missing.returncode != 0 and "JWT_SECRET" in missing.stderr
    result = config({"JWT_SECRET": "x" * 48})
    assert result.returncode == 0, result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert [alias for _, alias in stages] == ["builder", "runtime"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["shardchat"\]$', text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)


def test_dockerfile_copies_every_package() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in patterns:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} \./{package}$", text, re.MULTILINE), package
