"""Reading rendered Kubernetes manifests: objects by kind and name, pod specs, and the environment a container gets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.core.settings import ServiceSettings
from services.gateway.settings import GatewaySettings
from services.ranking.settings import RankingSettings
from services.retrieval.settings import RetrievalSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
K8S = PROJECT_ROOT / "k8s"
CHECK_SCRIPT = PROJECT_ROOT / "scripts" / "k8s_check.sh"

#: The Aisle services: the label/container name in the manifests -> its settings class.
SERVICES: dict[str, type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "retrieval": RetrievalSettings,
    "ranking": RankingSettings,
}
#: Workloads that run an Aisle service under an app name of their own -> the service: the index shards of
#: components/sharded-retrieval (the retrieval Deployment is then their router).
SERVICE_OF_APP: dict[str, str] = {"retrieval-shard": "retrieval"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
NAME_LABEL = "app.kubernetes.io/name"
#: Objects that live outside any namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


@dataclass(frozen=True)
class Render:
    """One rendered combination: ``<overlay>[+<component>...]`` and its objects."""

    name: str
    objects: list[dict] = field(repr=False)

    @property
    def overlay(self) -> str:
        return self.name.split("+")[0]

    @property
    def components(self) -> set[str]:
        return set(self.name.split("+")[1:])

    def of_kind(self, *kinds: str) -> list[dict]:
        return [obj for obj in self.objects if obj["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict | None:
        found = [obj for obj in self.objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
        assert len(found) <= 1, f"{self.name}: {len(found)} {kind} objects named {name}"
        return found[0] if found else None

    def workloads(self) -> list[dict]:
        return self.of_kind(*WORKLOAD_KINDS)

    def workload_of(self, app: str) -> dict | None:
        """The workload whose pods carry app.kubernetes.io/name=app."""
        found = [w for w in self.workloads() if pod_labels(w).get(NAME_LABEL) == app]
        assert len(found) <= 1, f"{self.name}: {len(found)} workloads for {app}"
        return found[0] if found else None

    def service_containers(self) -> Iterator[tuple[str, dict, dict]]:
        """(service, workload, container) for each Aisle service: the container named after the service, in the
        service's own workload and in any other that runs it (SERVICE_OF_APP)."""
        for service in SERVICES:
            workload = self.workload_of(service)
            assert workload is not None, f"{self.name}: no workload runs {service}"
            yield service, workload, container_named(workload, service)
        for app, service in SERVICE_OF_APP.items():
            workload = self.workload_of(app)
            if workload is not None:
                yield service, workload, container_named(workload, service)


def load_render(path: Path) -> Render:
    with path.open(encoding="utf-8") as stream:
        objects = [obj for obj in yaml.load_all(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if obj]
    return Render(path.stem, objects)


def pod_template(workload: dict) -> dict:
    return workload["spec"]["template"]


def pod_spec(workload: dict) -> dict:
    return pod_template(workload)["spec"]


def pod_labels(workload: dict) -> dict:
    return pod_template(workload).get("metadata", {}).get("labels", {})


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def container_named(workload: dict, name: str) -> dict:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert found, f"{workload['metadata']['name']} has no container named {name}"
    return found[0]


def named_ports(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container.get("ports", []) if "name" in port}


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels/matchExpressions, or a Service's plain map) matches ``labels``."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, values = labels.get(expression["key"]), expression.get("values", [])
        operator = expression["operator"]
        if operator == "In" and value not in values:
            return False
        if operator == "NotIn" and value in values:
            return False
        if operator == "Exists" and expression["key"] not in labels:
            return False
        if operator == "DoesNotExist" and expression["key"] in labels:
            return False
    return True


#: The value of a variable that the kubelet fills in (downward API, secrets): known only in the cluster.
FROM_CLUSTER = "<from the cluster>"
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_environment(render: Render, container: dict) -> dict[str, str]:
    """The variables a container gets, in Kubernetes' order (envFrom, then env, which wins), with ConfigMap
    references resolved from the same render and $(VAR) references expanded as the kubelet does."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        reference = source.get("configMapRef")
        assert reference is not None, f"{container['name']}: only ConfigMap envFrom is expected, got {source}"
        config_map = render.get("ConfigMap", reference["name"])
        assert config_map is not None, f"{render.name}: {container['name']} reads missing ConfigMap {reference}"
        for key, value in (config_map.get("data") or {}).items():
            environment[source.get("prefix", "") + key] = value
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            environment[name] = _REFERENCE.sub(lambda m: environment.get(m.group(1), m.group(0)), item["value"])
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            reference = item["valueFrom"]["configMapKeyRef"]
            config_map = render.get("ConfigMap", reference["name"])
            assert config_map is not None, f"{render.name}: {name} reads missing ConfigMap {reference['name']}"
            data = config_map.get("data") or {}
            assert reference["key"] in data, f"{render.name}: {name} reads missing key {reference}"
            environment[name] = data[reference["key"]]
        else:
            environment[name] = FROM_CLUSTER
    return environment


def environment_sources(render: Render, container: dict) -> dict[str, str]:
    """Variable -> how it is set (``env`` value, fieldRef, or the ConfigMap it comes from), for messages."""
    sources: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = render.get("ConfigMap", source["configMapRef"]["name"]) or {}
        for key in config_map.get("data") or {}:
            sources[source.get("prefix", "") + key] = f"ConfigMap {source['configMapRef']['name']}"
    for item in container.get("env", []):
        sources[item["name"]] = "env " + ("value" if "value" in item else next(iter(item.get("valueFrom", {"?": 0}))))
    return sources


def settings_from(render: Render, service: str, container: dict) -> dict[str, str]:
    """The AISLE_<SERVICE>_* variables a service container gets."""
    prefix = str(SERVICES[service].model_config.get("env_prefix", "")).upper()
    return {k: v for k, v in container_environment(render, container).items() if k.upper().startswith(prefix)}


def grpc_target(target: str) -> tuple[str, int]:
    """``dns:///host:port`` (or ``host:port``) -> (host, port)."""
    match = re.fullmatch(r"(?:dns:(?://[^/]*)?/)?([A-Za-z0-9.-]+):(\d+)", target)
    assert match, f"not a host:port gRPC target: {target!r}"
    return match.group(1), int(match.group(2))
