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
    "BERTH_INTERNAL_TOKEN": "t" * 40,
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
    # collectstatic at build time loads production settings, which need every required secret.
    build = "\n".join(stages[-2])
    for name in ("SECRET_KEY=", "BERTH_KEY_PEPPERS=", "ALLOWED_HOSTS=", "BERTH_INTERNAL_TOKEN="):
        assert name in build, name


def test_the_agent_image_builds_on_the_official_vllm_image():
    text = (DOCKER / "Dockerfile.agent").read_text()
    assert re.search(r"ARG VLLM_IMAGE=vllm/vllm-openai:v0\.33\.\d+", text)
    assert "FROM ${VLLM_IMAGE}" in text
    assert re.search(r"^USER\s+berth", text, re.M)
    assert "--require-hashes -r requirements/agent.txt" in text  # the lock of ".[agent]"
    extras = _pyproject_extras()
    assert "agent" in extras


def test_the_agent_image_copies_every_package_the_project_installs():
    # ``pip install -e .`` in the image finds only what was copied: a package left out (or one
    # renamed since) fails the build, or the agent at its first import.
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    text = (DOCKER / "Dockerfile.agent").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    packages = {pattern.rstrip("*") for pattern in found["include"]}
    assert packages <= copied, sorted(packages - copied)
    assert copied <= packages | {"templates"}, sorted(copied - packages)  # nothing stale
    assert all((ROOT / name).is_dir() for name in copied)


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


def test_the_entrypoint_has_exactly_the_roles_of_berth_roles_running_their_commands():
    from berth import roles as platform

    roles = entrypoint_roles()
    assert set(roles) == set(platform.NAMES) | {"manage"}
    for role in platform.ROLES:
        assert role.signature in roles[role.name], f"{role.name} does not run {role.signature}"
        command = " ".join(role.command)
        assert role.signature in command.replace("{python} ", "").replace("{manage}", "manage.py")
    assert "consume_usage" in roles["usage"]


def test_forwarded_headers_are_trusted_only_from_configured_proxies():
    roles = entrypoint_roles()
    assert '--forwarded-allow-ips "$trusted"' in roles["web"]
    assert 'FORWARDED_ALLOW_IPS="$trusted"' in roles["gateway"]
    text = (DOCKER / "entrypoint.sh").read_text()
    assert 'trusted="${BERTH_TRUSTED_PROXIES:-127.0.0.1}"' in text
    assert "FORWARDED_ALLOW_IPS:-*" not in text


def test_every_entrypoint_role_runs_a_command_that_exists():
    roles = entrypoint_roles()
    assert {"web", "gateway", "usage", "worker", "beat", "agent", "migrate"} <= set(roles)
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
        "usage",
        "worker",
        "beat",
        "agent",
        "prometheus",
        "grafana",
    }


def test_adapter_files_are_shared_by_the_control_plane_and_the_nodes():
    # The control plane fetches and checks adapters into BERTH_DATA_DIR/adapters; engines on the
    # node load them from the path the registry publishes, so both must see one volume there.
    services = compose_config()["services"]

    images = {"web": "Dockerfile", "worker": "Dockerfile", "agent": "Dockerfile.agent"}

    def adapter_volume(name: str) -> str | None:
        data_dir = re.search(r"BERTH_DATA_DIR=(\S+)", (DOCKER / images[name]).read_text()).group(1)
        for mount in services[name].get("volumes", []):
            source, target = (
                (mount["source"], mount["target"]) if isinstance(mount, dict) else mount.split(":")[:2]
            )
            if target == f"{data_dir}/adapters":
                return source
        return None

    sources = {name: adapter_volume(name) for name in ("web", "worker", "agent")}
    assert None not in sources.values(), sources
    assert len(set(sources.values())) == 1, sources


def test_batch_files_are_shared_by_web_and_the_worker():
    # Web stores uploads, the worker's batch runner reads them and writes the results: on one
    # host a shared volume (S3 is the other choice, batches/storage.py).
    services = compose_config()["services"]

    def files_volume(name: str) -> str | None:
        target = services[name]["environment"]["BERTH_FILES_DIR"]
        for mount in services[name].get("volumes", []):
            source, where = (
                (mount["source"], mount["target"]) if isinstance(mount, dict) else mount.split(":")[:2]
            )
            if where == target:
                return source
        return None

    assert services["web"]["environment"]["BERTH_FILES_STORAGE"] == "filesystem"
    assert files_volume("web") is not None and files_volume("web") == files_volume("worker")


def test_kubernetes_keeps_batch_files_in_s3():
    # Web and worker pods share no volume: the files storage is a bucket.
    config = by_kind(kustomize_build(), "ConfigMap")["berth-config"]["data"]
    assert config["BERTH_FILES_STORAGE"] == "s3" and config["BERTH_S3_BUCKET"]
    assert config["BERTH_GATEWAY_CONTROL_PLANE_URL"] == "http://web:8000"
    from batches.storage import storage_settings

    backend = storage_settings(data_dir=Path("/data"), environ=config)
    assert backend["BACKEND"] == "storages.backends.s3.S3Storage"
    assert "endpoint_url" not in backend["OPTIONS"]  # empty means AWS itself


def test_compose_runs_one_service_per_role_and_no_other_berth_service():
    from berth import roles as platform

    services = compose_config()["services"]
    berth = {
        name: s
        for name, s in services.items()
        if s.get("build", {}).get("dockerfile", "").startswith("docker/")
    }
    assert {name: s["command"] for name, s in berth.items()} == {name: [name] for name in platform.NAMES}


def test_the_usage_consumer_restarts_and_reports_health():
    usage = compose_config()["services"]["usage"]
    assert usage["restart"] == "unless-stopped"
    assert usage["healthcheck"]["test"] == ["CMD", "/app/docker/healthcheck.sh"]
    assert "consume_usage" in (DOCKER / "healthcheck.sh").read_text()
    assert usage["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def published(service: dict) -> list[tuple[str, str]]:
    """(host ip, target) of each published port; an empty ip means every interface."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            parts = port.split(":")
            ip = parts[0] if len(parts) == 3 else ""
            found.append((ip, parts[-1].split("/")[0]))
        else:
            found.append((port.get("host_ip", ""), str(port["target"])))
    return found


def test_compose_publishes_only_web_and_the_gateway():
    services = compose_config()["services"]
    public = {
        name for name, s in services.items() for ip, _ in published(s) if ip not in ("127.0.0.1", "::1")
    }
    assert public == {"web", "gateway"}
    for name in ("prometheus", "grafana"):
        assert published(services[name]) and all(ip == "127.0.0.1" for ip, _ in published(services[name]))
        assert services[name]["profiles"] == ["monitoring"]  # opt-in
    assert not services["postgres"].get("ports") and not services["redis"].get("ports")
    assert (
        services["prometheus"]["environment"]["BERTH_INTERNAL_TOKEN"] == COMPOSE_ENV["BERTH_INTERNAL_TOKEN"]
    )


def test_compose_refuses_to_start_without_an_internal_token():
    result = subprocess.run(
        [shutil.which("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "config"],
        env={**os.environ, **COMPOSE_ENV, "BERTH_INTERNAL_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "BERTH_INTERNAL_TOKEN" in result.stderr


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
    for name in ("web", "usage", "worker", "beat", "agent"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
    assert services["web"]["environment"]["DEBUG"] == "0"
    # The gateway never reaches PostgreSQL: it waits for Redis only.
    depends = services["gateway"]["depends_on"]
    assert set(depends) == {"redis"} and depends["redis"]["condition"] == "service_healthy"


# What must never reach the gateway: it has no database, signs nothing with Django and bills nobody.
GATEWAY_FORBIDDEN = re.compile(r"^(DATABASE_URL|SECRET_KEY|STRIPE_.*|POSTGRES_.*)$")
# Read by the entrypoint or uvicorn for the gateway role, besides gateway/config.py.
GATEWAY_PROCESS_ENV = {"BERTH_TRUSTED_PROXIES", "GATEWAY_WORKERS", "BERTH_GATEWAY_HOST", "BERTH_GATEWAY_PORT"}


def gateway_reads() -> set[str]:
    from gateway.config import GatewaySettings

    return {str(field.validation_alias) for field in GatewaySettings.model_fields.values()}


def test_the_gateway_service_gets_only_what_the_gateway_reads():
    env = compose_config()["services"]["gateway"]["environment"]
    assert not [name for name in env if GATEWAY_FORBIDDEN.match(name)], env.keys()
    assert set(env) <= gateway_reads() | GATEWAY_PROCESS_ENV
    assert {"REDIS_URL", "BERTH_KEY_PEPPERS", "BERTH_INTERNAL_TOKEN"} <= set(env)
    assert env["DEBUG"] == "0"  # /metrics needs the token
    # /v1/files and /v1/batches go to the web service, whose ALLOWED_HOSTS names it.
    assert env["BERTH_GATEWAY_CONTROL_PLANE_URL"] == "http://web:8000"
    web = compose_config()["services"]["web"]["environment"]
    assert env["BERTH_FILES_MAX_BYTES"] == web["BERTH_FILES_MAX_BYTES"]  # one upload limit
    assert "web" in web["ALLOWED_HOSTS"].split(",")


def test_the_gateway_deployment_gets_only_what_the_gateway_reads():
    docs = kustomize_build()
    pod = by_kind(docs, "Deployment")["berth-gateway"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "envFrom" not in container  # the whole berth-secrets would carry the database URL
    names = {item["name"] for item in container["env"]}
    assert not [name for name in names if GATEWAY_FORBIDDEN.match(name)]
    assert names <= gateway_reads() | GATEWAY_PROCESS_ENV
    assert {
        "REDIS_URL",
        "BERTH_KEY_PEPPERS",
        "BERTH_INTERNAL_TOKEN",
        "DEBUG",
        "BERTH_GATEWAY_CONTROL_PLANE_URL",
    } <= names
    secrets = by_kind(docs, "Secret")["berth-secrets"]["stringData"]
    config = by_kind(docs, "ConfigMap")["berth-config"]["data"]
    for item in container["env"]:
        ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"]["configMapKeyRef"]
        source = secrets if "secretKeyRef" in item["valueFrom"] else config
        assert ref["key"] == item["name"] and ref["key"] in source, item
    assert config["DEBUG"] == "0"


def test_the_gateway_starts_from_its_compose_environment_alone():
    """No DATABASE_URL, no SECRET_KEY: the gateway's own environment is enough to serve."""
    import httpx

    from tests.gateway.conftest import free_port, gateway_argv, wait_http

    env = {k: str(v) for k, v in compose_config()["services"]["gateway"]["environment"].items()}
    env["REDIS_URL"] = settings.REDIS_URL  # the compose host name does not resolve here
    env["PATH"] = os.environ["PATH"]
    port = free_port()
    process = subprocess.Popen(gateway_argv(port), env=env, cwd=ROOT, stderr=subprocess.PIPE)  # noqa: S603
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
        except RuntimeError:
            process.kill()
            pytest.fail(process.communicate()[1].decode()[-3000:])
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 401  # DEBUG is off there: the token guards /metrics
        token = {"authorization": f"Bearer {COMPOSE_ENV['BERTH_INTERNAL_TOKEN']}"}
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", headers=token).status_code == 200
    finally:
        process.terminate()
        process.wait(20)


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


def test_kubernetes_runs_every_role_of_berth_roles_and_no_other():
    from berth import roles as platform

    docs = kustomize_build()
    for kind in ("Deployment", "Job"):
        objects = by_kind(docs, kind)
        wanted = {r.name for r in platform.ROLES if r.kubernetes == kind}
        assert set(objects) == {f"berth-{name}" for name in wanted}, kind
        for name in wanted:
            assert objects[f"berth-{name}"]["spec"]["template"]["spec"]["containers"][0]["args"] == [name]
    assert all(r.kubernetes_note for r in platform.ROLES if r.kubernetes is None)


def test_the_usage_consumer_runs_two_replicas_with_probes_on_its_metrics_port():
    docs = kustomize_build()
    usage = by_kind(docs, "Deployment")["berth-usage"]
    assert usage["spec"]["replicas"] >= 2  # they share the consumer group
    container = usage["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9102}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert usage["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    pdb = by_kind(docs, "PodDisruptionBudget")["berth-usage"]
    assert pdb["spec"]["minAvailable"] < usage["spec"]["replicas"]
    secret = by_kind(docs, "Secret")["berth-secrets"]["stringData"]
    assert "BERTH_INTERNAL_TOKEN" in secret


def test_deployments_run_each_role_non_root_with_probes():
    deployments = by_kind(kustomize_build(), "Deployment")
    assert set(deployments) == {"berth-web", "berth-gateway", "berth-usage", "berth-worker", "berth-beat"}
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
    assert routes == {"/v1": "gateway", "/internal": "private", "/metrics": "private", "/": "web"}
    for name in ("gateway", "web"):
        assert services[name]["spec"]["selector"]["app.kubernetes.io/component"] == name
    # The private surfaces lead nowhere: a Service that selects no pod.
    assert "selector" not in services["private"]["spec"]
    assert not by_kind(docs, "Endpoints") and not by_kind(docs, "EndpointSlice")


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


def test_prometheus_scrapes_the_usage_consumer_and_presents_the_token_to_berth():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["berth-usage"]["dns_sd_configs"][0] == {"names": ["usage"], "type": "A", "port": 9102}
    token = "/prometheus/berth-token"
    for name in ("berth-gateway", "berth-usage", "berth-control-plane"):
        assert jobs[name]["authorization"] == {"credentials_file": token}, name
    assert jobs["berth-engines"]["http_sd_configs"][0]["authorization"] == {"credentials_file": token}
    prometheus = compose_config({"BERTH_INTERNAL_TOKEN": "t" * 40})["services"]["prometheus"]
    assert token in " ".join(prometheus["entrypoint"])


def test_the_alert_rules_are_loaded_and_watch_metrics_the_consumer_exports():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounted = [target for _, target in volumes(compose_config()["services"]["prometheus"])]
    assert "/etc/prometheus/alerts.yml" in mounted
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"BerthUsageConsumerDown", "BerthUsageLagTooOld"} <= set(alerts)
    assert 'up{job="berth-usage"}' in alerts["BerthUsageConsumerDown"]["expr"]
    exported = consumer_metric_names()
    used = {m for r in alerts.values() for m in re.findall(r"\b(berth_usage_[a-z_]+)", r["expr"])}
    assert used and used <= exported, used - exported


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
        | consumer_metric_names()
        | {
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:generation_tokens_total",
            "vllm:prompt_tokens_total",
        }
    )
    assert names and names <= exported, names - exported


def consumer_metric_names() -> set[str]:
    from billing.usage import METRICS

    families = list(METRICS.registry.collect())
    return {f.name for f in families} | {s.name for f in families for s in f.samples}


def gateway_metric_names() -> set[str]:
    source = (
        (ROOT / "gateway" / "metrics.py").read_text() if (ROOT / "gateway" / "metrics.py").exists() else ""
    )
    return set(re.findall(r'"(berth_gateway_[a-z_]+)"', source))


def test_up_hands_the_gateway_what_the_control_plane_resolved(settings):
    """The gateway reads no Django settings: ``up`` passes it the embedded Redis and dev peppers."""
    from berth import roles as platform

    env = platform.env("gateway")
    assert env["BERTH_ROLE"] == "gateway"
    assert env["REDIS_URL"] == settings.REDIS_URL
    assert env["BERTH_REDIS_PREFIX"] == settings.REDIS_PREFIX
    assert env["BERTH_KEY_PEPPERS"] == ",".join(f"{k}:{v}" for k, v in settings.KEY_PEPPERS.items())
    assert env["DEBUG"] == ("1" if settings.DEBUG else "0")
    assert env["BERTH_GATEWAY_CONTROL_PLANE_URL"] == f"http://127.0.0.1:{settings.WEB_PORT}"
    assert env["BERTH_FILES_MAX_BYTES"] == str(settings.FILES_MAX_BYTES)
    assert set(env) <= gateway_reads() | {"BERTH_ROLE"}
    assert platform.env("web") == {"BERTH_ROLE": "web"}  # Django roles resolve it themselves


def test_the_celery_worker_reaches_the_gateway_inside_the_deployment():
    """Batch lines go from the worker to the gateway's in-cluster address with the internal token."""
    compose = compose_config()["services"]
    worker = compose["worker"]["environment"]
    assert worker["BERTH_GATEWAY_INTERNAL_URL"] == "http://gateway:8001"
    assert worker["BERTH_INTERNAL_TOKEN"] == compose["gateway"]["environment"]["BERTH_INTERNAL_TOKEN"]
    config = next(
        doc
        for doc in yaml.safe_load_all((K8S / "configmap.yaml").read_text())
        if doc and doc["kind"] == "ConfigMap"
    )
    url = config["data"]["BERTH_GATEWAY_INTERNAL_URL"]
    service = next(
        doc
        for doc in yaml.safe_load_all((K8S / "gateway.yaml").read_text())
        if doc and doc["kind"] == "Service"
    )
    port = service["spec"]["ports"][0]["port"]
    assert url == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
    worker_yaml = (K8S / "worker.yaml").read_text()
    assert "berth-config" in worker_yaml  # the worker reads the ConfigMap
