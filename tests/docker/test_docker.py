"""docker/: the image's entry commands exist, compose parses, Kubernetes manifests validate."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
K8S_VERSION = "1.33.0"
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "SECRET_KEY": "s" * 64,
    "BERTH_KEY_PEPPERS": "p1:" + "k" * 40,
    "GRAFANA_ADMIN_PASSWORD": "grafana-secret",
}


# --------------------------------------------------------------------------- images


def dockerfile_stages(path: Path) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in path.read_text().splitlines():
        if re.match(r"^FROM\s", line):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_control_plane_image_is_multi_stage_non_root_and_healthchecked():
    stages = dockerfile_stages(DOCKER / "Dockerfile")
    assert len(stages) >= 2
    final = "\n".join(stages[-1])
    assert "build-essential" not in final and "gcc" not in final
    user = re.search(r"^USER\s+(\S+)", final, re.M)
    assert user and not user.group(1).startswith(("root", "0"))
    assert "HEALTHCHECK" in final and 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in final


def test_the_agent_image_builds_on_the_official_vllm_image():
    text = (DOCKER / "Dockerfile.agent").read_text()
    assert re.search(r"ARG VLLM_IMAGE=vllm/vllm-openai:v0\.33\.\d+", text)
    assert "FROM ${VLLM_IMAGE}" in text
    assert re.search(r"^USER\s+berth", text, re.M)
    assert '.[agent]"' in text
    extras = _pyproject_extras()
    assert "agent" in extras


def _pyproject_extras() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def entrypoint_roles() -> dict[str, str]:
    roles: dict[str, str] = {}
    current = None
    for line in (DOCKER / "entrypoint.sh").read_text().splitlines():
        start = re.match(r"^  (\w+)\)$", line)
        if start:
            current = start.group(1)
            roles[current] = ""
        elif current:
            roles[current] += line + "\n"
            if line.rstrip().endswith(";;"):
                current = None
    return roles


def test_every_entrypoint_role_runs_a_command_that_exists():
    roles = entrypoint_roles()
    assert {"web", "gateway", "worker", "beat", "agent", "migrate"} <= set(roles)
    from django.core.management import get_commands

    commands = get_commands()
    for role, body in roles.items():
        for command in re.findall(r"manage\.py (\w+)", body):
            if command != "$@":
                assert command in commands, f"{role}: manage.py {command} does not exist"
    assert "berth.asgi:application" in roles["web"]
    import berth.asgi  # noqa: F401 - the module uvicorn loads must import

    assert "celery -A berth worker" in roles["worker"] and "celery -A berth beat" in roles["beat"]
    shell = shutil.which("sh")
    assert subprocess.run([shell, "-n", str(DOCKER / "entrypoint.sh")], check=False).returncode == 0
    assert subprocess.run([shell, "-n", str(DOCKER / "healthcheck.sh")], check=False).returncode == 0


def test_settings_load_from_the_documented_production_environment(tmp_path):
    compose = compose_config()
    env = {k: str(v) for k, v in compose["services"]["web"]["environment"].items()}
    env["DATABASE_URL"] = settings.DATABASE_URL  # reachable here; settings connect lazily anyway
    env["REDIS_URL"] = settings.REDIS_URL
    env.update(PATH=os.environ["PATH"], DJANGO_SETTINGS_MODULE="berth.settings", BERTH_DATA_DIR=str(tmp_path))
    probe = "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps([s.DEBUG, s.ALLOWED_HOSTS]))"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    debug, hosts = json.loads(result.stdout)
    assert debug is False and "web" in hosts


# --------------------------------------------------------------------------- compose


def compose_config(extra_env: dict | None = None) -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed (apt-get install docker-compose); the README's test command installs it"
        )
    env = {**os.environ, **COMPOSE_ENV, **(extra_env or {})}
    result = subprocess.run(
        [binary, "-f", str(DOCKER / "compose.yaml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_validates_and_has_every_service():
    config = compose_config()
    assert set(config["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "gateway",
        "worker",
        "beat",
        "agent",
        "prometheus",
        "grafana",
    }


def test_compose_refuses_to_start_without_secrets():
    binary = shutil.which("docker-compose")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    result = subprocess.run(
        [binary, "-f", str(DOCKER / "compose.yaml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "docker/.env" in result.stderr


def test_redis_persists_with_aof_and_agent_reserves_gpus():
    services = compose_config()["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert any(target == "/data" for _, target in volumes(services["redis"]))
    devices = services["agent"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any(target == "/models" for _, target in volumes(services["agent"]))


def test_app_services_wait_for_migrations_and_healthy_stores():
    services = compose_config()["services"]
    for name in ("web", "gateway", "worker", "beat", "agent"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
    assert services["web"]["environment"]["DEBUG"] == "0"


def volumes(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, whichever syntax `config` printed."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        found.append((source, target))
    return found


def test_compose_mounts_only_files_that_exist():
    for service in compose_config()["services"].values():
        for source, _ in volumes(service):
            if source.startswith("/"):
                assert Path(source).exists(), source


# --------------------------------------------------------------------------- kubernetes


def kustomize_build() -> list[dict]:
    """What `kubectl kustomize docker/k8s` renders for the features this kustomization uses."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in kustomization["resources"]:
        docs.extend(doc for doc in yaml.safe_load_all((K8S / resource).read_text()) if doc)
    for generator in kustomization.get("secretGenerator", []):
        data = {}
        for env_file in generator["envs"]:
            source = K8S / env_file
            source = source if source.exists() else K8S / f"{env_file}.example"
            for line in source.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    data[key] = value
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": generator["name"], "namespace": generator.get("namespace")},
                "stringData": data,
            }
        )
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            container["image"] = images.get(container["image"], container["image"])
        for label in kustomization.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    return docs


def test_every_manifest_validates_against_the_kubernetes_schema():
    import kubernetes_validate

    docs = kustomize_build()
    assert len(docs) >= 15
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_deployments_run_each_role_non_root_with_probes():
    deployments = by_kind(kustomize_build(), "Deployment")
    assert set(deployments) == {"berth-web", "berth-gateway", "berth-worker", "berth-beat"}
    roles = entrypoint_roles()
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"][0] in roles
        assert container["image"] == "ghcr.io/berth-dev/berth:0.1.0"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        if name in ("berth-web", "berth-gateway"):
            assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployments["berth-beat"]["spec"]["replicas"] == 1
    assert deployments["berth-beat"]["spec"]["strategy"]["type"] == "Recreate"


def test_the_gateway_scales_horizontally_behind_a_disruption_budget():
    docs = kustomize_build()
    gateway = by_kind(docs, "Deployment")["berth-gateway"]
    pdb = by_kind(docs, "PodDisruptionBudget")["berth-gateway"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["berth-gateway"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= gateway["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pdb["spec"]["minAvailable"] < gateway["spec"]["replicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "berth-gateway"


def test_ingress_sends_v1_to_the_gateway_and_the_rest_to_web():
    docs = kustomize_build()
    services = by_kind(docs, "Service")
    paths = by_kind(docs, "Ingress")["berth"]["spec"]["rules"][0]["http"]["paths"]
    routes = {p["path"]: p["backend"]["service"]["name"] for p in paths}
    assert routes == {"/v1": "gateway", "/": "web"}
    for name in routes.values():
        assert services[name]["spec"]["selector"]["app.kubernetes.io/component"] == name


def test_the_provisioner_gets_only_namespaced_deployments_and_services():
    docs = kustomize_build()
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    role = by_kind(docs, "Role")["berth-provisioner"]
    config = by_kind(docs, "ConfigMap")["berth-config"]["data"]
    assert role["metadata"]["namespace"] == config["BERTH_K8S_NAMESPACE"]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted <= {
        ("apps", "deployments"),
        ("apps", "deployments/scale"),
        ("", "services"),
        ("", "pods"),
        ("", "endpoints"),
        ("", "pods/log"),
    }
    writes = {r for rule in role["rules"] if "create" in rule["verbs"] for r in rule["resources"]}
    assert writes == {"deployments", "services"}
    binding = by_kind(docs, "RoleBinding")["berth-provisioner"]
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "berth-provisioner",
        "namespace": "berth",
    }
    worker = by_kind(docs, "Deployment")["berth-worker"]["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == "berth-provisioner"
    for name in ("berth-web", "berth-gateway", "berth-beat"):
        assert (
            by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["automountServiceAccountToken"]
            is False
        )


# --------------------------------------------------------------------------- observability


def test_prometheus_scrapes_the_gateway_and_the_engines():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["berth-gateway"]["static_configs"][0]["targets"] == ["gateway:8001"]
    assert jobs["berth-engines"]["http_sd_configs"][0]["url"].startswith("http://web:8000/")


def test_the_grafana_dashboard_is_provisioned_and_queries_metrics_berth_exports():
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/berth.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((DOCKER / "grafana/dashboards/berth.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert all(t["datasource"]["uid"] == uid for p in dashboard["panels"] for t in p.get("targets", []))
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Requests/s by model",
        "Time to first token",
        "Tokens/s per model",
        "GPU pool",
        "Queue depth (waiting requests)",
    } <= titles
    # Every metric the dashboard reads is one Berth's gateway, control plane or vLLM exports.
    names = {
        m
        for e in exprs
        for m in re.findall(r"\b((?:berth|vllm)[:_][a-z_:]+?)(?:_bucket)?\b(?=[{\[)\s]|$)", e)
    }
    exported = (
        gateway_metric_names()
        | {
            "berth_pool_gpus",
            "berth_pool_gpus_in_use",
            "berth_workers",
            "berth_pool_cpu_slots",
            "berth_pool_cpu_slots_in_use",
        }
        | {
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:generation_tokens_total",
            "vllm:prompt_tokens_total",
        }
    )
    assert names and names <= exported, names - exported


def gateway_metric_names() -> set[str]:
    source = (
        (ROOT / "gateway" / "metrics.py").read_text() if (ROOT / "gateway" / "metrics.py").exists() else ""
    )
    return set(re.findall(r'"(berth_gateway_[a-z_]+)"', source))
