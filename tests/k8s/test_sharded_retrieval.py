"""components/sharded-retrieval: N index shards (StatefulSet retrieval-shard, one pod per shard) behind the retrieval
Deployment, which becomes their router. Checked in every render that includes the component: the router's shard
targets are exactly the shard pods' stable names, each shard pod copies its own shard folder (the init container
run for real against a local store), the router's settings exist, the network policies let the router (and only
it) reach the shards, and no autoscaler changes the shard count."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from unittest import mock

import pytest
import yaml

from services.core.settings import load_settings
from services.retrieval.settings import RetrievalSettings
from tests.k8s.conftest import CheckRun, missing_tools, tool_path
from tests.k8s.manifests import (
    FROM_CLUSTER,
    K8S,
    Render,
    container_environment,
    container_named,
    grpc_target,
    load_render,
    named_ports,
    pod_labels,
    pod_spec,
    selects,
    settings_from,
)

COMPONENT = "sharded-retrieval"
SHARDS = "retrieval-shard"
ROUTER = "retrieval"
#: The label the StatefulSet controller puts on each pod (Kubernetes >= 1.28), and the downward API path to it.
POD_INDEX_PATH = "metadata.labels['apps.kubernetes.io/pod-index']"
SYNC_SCRIPT = K8S / "base" / "config" / "sync-artifacts.sh"
TARGETS = RetrievalSettings.env_name("shard_targets")


def sharded(renders: list[Render]) -> list[Render]:
    found = [r for r in renders if COMPONENT in r.components]
    assert found, f"no render with components/{COMPONENT}"
    return found


def shard_set(render: Render) -> dict:
    workload = render.get("StatefulSet", SHARDS)
    assert workload is not None, f"{render.name}: no StatefulSet {SHARDS}"
    return workload


def router(render: Render) -> dict:
    workload = render.get("Deployment", ROUTER)
    assert workload is not None, f"{render.name}: no Deployment {ROUTER}"
    return workload


def retrieval_settings(render: Render, container: dict) -> RetrievalSettings:
    with mock.patch.dict(os.environ, settings_from(render, "retrieval", container), clear=True):
        return load_settings(RetrievalSettings)


def field_refs(container: dict) -> dict[str, str]:
    """Variable -> downward API field path, for the variables a container gets from the pod's own fields."""
    return {
        item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
        for item in container.get("env", [])
        if "fieldRef" in item.get("valueFrom", {})
    }


def sync_container(workload: dict) -> dict:
    (sync,) = [c for c in pod_spec(workload).get("initContainers", []) if c["name"] == "sync-index"]
    return sync


def shard_targets(render: Render) -> list[str]:
    """The router's shard targets as its pod sees them: $(K8S_NAMESPACE_NAME) is the pod's namespace."""
    workload = router(render)
    container = container_named(workload, ROUTER)
    names = [item["name"] for item in container.get("env", [])]
    raw = next((item.get("value", "") for item in container.get("env", []) if item["name"] == TARGETS), None)
    if raw is not None and "$(K8S_NAMESPACE_NAME)" in raw:
        # The kubelet expands only variables defined earlier in the list.
        assert field_refs(container).get("K8S_NAMESPACE_NAME") == "metadata.namespace", f"{render.name}"
        assert names.index("K8S_NAMESPACE_NAME") < names.index(TARGETS), (
            f"{render.name}: {TARGETS} comes before K8S_NAMESPACE_NAME, so $(K8S_NAMESPACE_NAME) stays unexpanded"
        )
    value = retrieval_settings(render, container).shard_targets
    namespace = workload["metadata"]["namespace"]
    return [t.strip().replace(FROM_CLUSTER, namespace) for t in value.split(",") if t.strip()]


def test_the_component_is_rendered_on_every_overlay_and_changes_nothing_without_it(renders: list[Render]):
    overlays = {r.overlay for r in renders}
    assert {r.overlay for r in sharded(renders)} == overlays, "make k8s-check renders the component on every overlay"
    for render in renders:
        if COMPONENT in render.components:
            continue
        assert render.get("StatefulSet", SHARDS) is None and render.get("Service", SHARDS) is None, render.name
        assert not retrieval_settings(render, container_named(router(render), ROUTER)).shards, (
            f"{render.name}: retrieval routes to shards without {COMPONENT}"
        )


def test_the_router_calls_every_shard_pod_by_its_stable_name(renders: list[Render]):
    for render in sharded(renders):
        shards = shard_set(render)
        count = shards["spec"]["replicas"]
        service = render.get("Service", shards["spec"]["serviceName"])
        assert service is not None, f"{render.name}: the StatefulSet's serviceName {shards['spec']['serviceName']}"
        assert service["spec"].get("clusterIP") == "None", f"{render.name}: per-pod DNS names need a headless Service"
        assert selects(service["spec"]["selector"], pod_labels(shards)), f"{render.name}: the Service misses shards"
        port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"]
        assert retrieval_settings(render, container_named(shards, ROUTER)).port == port
        name, namespace = shards["metadata"]["name"], shards["metadata"]["namespace"]
        expected = [f"{name}-{i}.{service['metadata']['name']}.{namespace}.svc:{port}" for i in range(count)]
        assert shard_targets(render) == expected, (
            f"{render.name}: the router's {TARGETS} must list the {count} shard pods (replicas) in order"
        )
        for target in expected:
            host, target_port = grpc_target(target)
            assert host.endswith(".svc") and target_port == port


def test_the_router_sets_only_real_settings_and_serves_the_router_folder(renders: list[Render]):
    known = {RetrievalSettings.env_name(name) for name in RetrievalSettings.model_fields}
    for render in sharded(renders):
        workload = router(render)
        container = container_named(workload, ROUTER)
        variables = settings_from(render, "retrieval", container)
        assert set(variables) <= known, f"{render.name}: not settings: {sorted(set(variables) - known)}"
        settings = retrieval_settings(render, container)
        assert settings.shards, f"{render.name}: the router has no shard targets"
        sync = sync_container(workload)
        kind, destination, version, root = sync["args"]
        assert (kind, version) == ("index", "$(INDEX_VERSION)"), f"{render.name}: {sync['args']}"
        assert PurePosixPath(root).name == "router" and PurePosixPath(destination).name == "router"
        assert PurePosixPath(str(settings.index_path)) == PurePosixPath(destination), (
            f"{render.name}: the router serves {settings.index_path}, its init container fills {destination}"
        )
        shards = shard_set(render)
        shard_sync = sync_container(shards)
        assert shard_sync["args"][0] == "shard" and str(PurePosixPath(shard_sync["args"][3]) / "router") == root, (
            f"{render.name}: the router and the shards read different sharded indexes"
        )
        # One pin for both: the same INDEX_VERSION, so that the router's vectors match the shards'.
        pins = {container_environment(render, c)["INDEX_VERSION"] for c in (sync, shard_sync)}
        assert len(pins) == 1, f"{render.name}: router and shards pin different index versions {pins}"


def test_shards_are_ordinary_index_servers_filled_by_their_init_container(renders: list[Render]):
    for render in sharded(renders):
        shards = shard_set(render)
        container = container_named(shards, ROUTER)
        settings = retrieval_settings(render, container)
        assert not settings.shards, f"{render.name}: a shard with shard targets would route instead of serving"
        sync = sync_container(shards)
        kind, destination, version, _ = sync["args"]
        assert (kind, version) == ("shard", "$(INDEX_VERSION)"), f"{render.name}: {sync['args']}"
        assert PurePosixPath(str(settings.index_path)) == PurePosixPath(destination)
        references = field_refs(sync)
        assert references.get("POD_INDEX") == POD_INDEX_PATH, (
            f"{render.name}: the ordinal comes from the pod-index label"
        )
        assert references.get("POD_NAME") == "metadata.name", f"{render.name}: the pod name is the ordinal's fallback"


def test_shard_pods_run_like_the_retrieval_pods(renders: list[Render]):
    same_pod = ("securityContext", "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks")
    same_container = ("image", "ports", "resources", "securityContext", "startupProbe", "readinessProbe")
    for render in sharded(renders):
        shards, routing = shard_set(render), router(render)
        spec, router_spec = pod_spec(shards), pod_spec(routing)
        for key in (*same_pod, "terminationGracePeriodSeconds"):
            assert spec.get(key) == router_spec.get(key), f"{render.name}: shard pods differ in {key}"
        for key in (*same_container, "livenessProbe", "volumeMounts"):
            shard_value = container_named(shards, ROUTER).get(key)
            assert shard_value == container_named(routing, ROUTER).get(key), f"{render.name}: container {key}"
        for key in ("image", "command", "resources", "securityContext", "envFrom", "volumeMounts"):
            assert sync_container(shards).get(key) == sync_container(routing).get(key), f"{render.name}: sync {key}"
        assert spec["volumes"] == router_spec["volumes"], f"{render.name}: the shards' volumes"
        # Spread like the retrieval pods, over the shard pods.
        labels, router_labels = pod_labels(shards), pod_labels(routing)
        spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
        router_spread = {c["topologyKey"]: c for c in router_spec["topologySpreadConstraints"]}
        assert spread.keys() == router_spread.keys(), f"{render.name}: spread keys"
        for key, constraint in spread.items():
            assert constraint["maxSkew"] == router_spread[key]["maxSkew"]
            assert constraint["whenUnsatisfiable"] == router_spread[key]["whenUnsatisfiable"]
            assert selects(constraint["labelSelector"], labels), f"{render.name}: {key} spread misses shard pods"
            assert not selects(constraint["labelSelector"], router_labels), f"{render.name}: {key} counts routers"
            assert "pod-template-hash" not in constraint.get("matchLabelKeys", []), "StatefulSet pods lack that label"
        budgets = [p for p in render.of_kind("PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
        assert len(budgets) == 1 and budgets[0]["spec"].get("maxUnavailable") == 1, f"{render.name}: {budgets}"
        # The gateway's Service and the retrieval budget keep to the router: a shard answers for its slice only.
        for kind in ("Service", "PodDisruptionBudget"):
            obj = render.get(kind, ROUTER)
            selector = obj["spec"]["selector"]
            assert not selects(selector, labels), f"{render.name}: {kind} {ROUTER} selects shard pods"
            assert selects(selector, router_labels), f"{render.name}: {kind} {ROUTER} lost the router pods"


def test_no_autoscaler_changes_the_shard_count(renders: list[Render]):
    for render in sharded(renders):
        shards = shard_set(render)
        assert shards["spec"].get("replicas", 0) >= 1, f"{render.name}: the shard count must be explicit"
        scaled = {
            (h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
            for h in render.of_kind("HorizontalPodAutoscaler")
        }
        assert ("StatefulSet", SHARDS) not in scaled, f"{render.name}: an HPA would add or remove shards"
        if "autoscaling" in render.components:
            assert ("Deployment", ROUTER) in scaled, f"{render.name}: the router is stateless and autoscaled"


def test_the_cpu_seed_job_builds_as_many_shards_as_there_are_shard_pods(renders: list[Render]):
    checked = 0
    for render in sharded(renders):
        seed = render.get("Job", "seed-artifacts")
        if seed is None:
            continue
        environment = container_environment(render, pod_spec(seed)["containers"][0])
        assert int(environment["INDEX_SHARDS"]) == shard_set(render)["spec"]["replicas"], render.name
        script = pod_spec(seed)["containers"][0]["args"][0]
        assert "aisle index build" in script and '--shards "$INDEX_SHARDS"' in script
        assert "--out /artifacts/sharded-index" in script, "where the shard pods' init containers read"
        checked += 1
    assert checked, "no cpu render with the component"


# --- Network policies: a small evaluator of NetworkPolicy semantics for pods of one namespace. -----------------


def _peer_matches(peer: dict, labels: dict, namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # addresses outside the cluster; whether a CNI applies them to pods varies
    namespaces = peer.get("namespaceSelector")
    if namespaces and not selects(namespaces, {"kubernetes.io/metadata.name": namespace}):
        return False
    return not peer.get("podSelector") or selects(peer["podSelector"], labels)


def _port_matches(rule: dict, destination: dict, port: int) -> bool:
    if not rule.get("ports"):
        return True
    named = {n: p for c in pod_spec(destination)["containers"] for n, p in named_ports(c).items()}
    return any((named.get(p["port"]) if isinstance(p["port"], str) else p["port"]) == port for p in rule["ports"])


def _allowed(render: Render, direction: str, subject: dict, peer: dict, destination: dict, port: int) -> bool:
    """Whether the policies let ``subject``'s pods send to (Egress) or receive from (Ingress) ``peer``'s pods on
    ``port`` of ``destination``'s pods."""
    field, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    namespace = subject["metadata"]["namespace"]
    governing = [
        p["spec"]
        for p in render.of_kind("NetworkPolicy")
        if direction in p["spec"].get("policyTypes", ["Ingress"]) and selects_pods(p["spec"], pod_labels(subject))
    ]
    if not governing:
        return True
    return any(
        (not rule.get(peers) or any(_peer_matches(x, pod_labels(peer), namespace) for x in rule[peers]))
        and _port_matches(rule, destination, port)
        for policy in governing
        for rule in policy.get(field, [])
    )


def selects_pods(policy: dict, labels: dict) -> bool:
    selector = policy["podSelector"]
    return selector == {} or selects(selector, labels)


def can_call(render: Render, caller: dict, callee: dict, port: int) -> bool:
    return _allowed(render, "Egress", caller, callee, callee, port) and _allowed(
        render, "Ingress", callee, caller, callee, port
    )


def test_network_policies_let_only_the_router_reach_the_shards(renders: list[Render]):
    checked = 0
    for render in sharded(renders):
        if "network-policies" not in render.components:
            continue
        shards, routing, gateway = shard_set(render), router(render), render.workload_of("gateway")
        grpc = named_ports(container_named(shards, ROUTER))["grpc"]
        for target in shard_targets(render):
            assert grpc_target(target)[1] == grpc
        assert can_call(render, routing, shards, grpc), f"{render.name}: the router cannot reach its shards"
        assert can_call(render, gateway, routing, named_ports(container_named(routing, ROUTER))["grpc"]), (
            f"{render.name}: the gateway cannot reach the router"
        )
        assert not can_call(render, gateway, shards, grpc), f"{render.name}: the gateway bypasses the router"
        assert not can_call(render, shards, shards, grpc), f"{render.name}: shards call each other"
        # The shards' sync container reads the artefact store (HTTPS) like the router's.
        store = [
            p["spec"]
            for p in render.of_kind("NetworkPolicy")
            if "Egress" in p["spec"]["policyTypes"] and selects_pods(p["spec"], pod_labels(shards))
            for rule in p["spec"].get("egress", [])
            if any(port.get("port") == 443 for port in rule.get("ports", []))
        ]
        assert store, f"{render.name}: the shard pods cannot read the artefact store"
        checked += 1
    assert checked, f"no render with network-policies and {COMPONENT}"


def test_the_network_policy_evaluator_can_refuse(renders: list[Render]):
    """The checks above are not vacuous: without the router's egress rule the router cannot reach its shards."""
    render = next(r for r in sharded(renders) if "network-policies" in r.components)
    objects = copy.deepcopy(render.objects)
    for obj in objects:
        if obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"] == ROUTER:
            obj["spec"]["egress"] = []
    broken = Render(render.name, objects)
    grpc = named_ports(container_named(shard_set(broken), ROUTER))["grpc"]
    assert not can_call(broken, router(broken), shard_set(broken), grpc)


# --- The init containers, run: each shard pod copies its own shard folder. ------------------------------------


def sharded_store(root: Path, shards: int) -> Path:
    """A local artefact store with an index of ``shards`` shards: every part of version V marked with its name."""
    for part in ("router", *(f"shard-{i}" for i in range(shards))):
        (root / "sharded-index" / part / "V").mkdir(parents=True)
        (root / "sharded-index" / part / "V" / "part.txt").write_text(part)
        (root / "sharded-index" / part / "V" / "metadata.json").write_text("{}")
    return root


def run_init_container(render: Render, workload: dict, ordinal: int, store: Path, out: Path, *, label: bool = True):
    """Runs a workload's sync-index init container as pod ``<name>-<ordinal>`` would: its args and environment
    from the render, the downward API filled in, the artefact store and the pod's volume local."""
    sync = sync_container(workload)
    environment = {
        k: v for k, v in container_environment(render, sync).items() if v != FROM_CLUSTER and k != "ARTIFACTS_URI"
    }
    pod = {"metadata.name": f"{workload['metadata']['name']}-{ordinal}", POD_INDEX_PATH: str(ordinal)}
    for name, path in field_refs(sync).items():
        if path == POD_INDEX_PATH and not label:
            environment[name] = ""  # a cluster without the label: the downward API gives an empty string
        else:
            environment[name] = pod[path]
    environment.update({"ARTIFACTS_URI": str(store), "SYNC_WAIT_S": "0", "INDEX_VERSION": "V"})
    args = [re.sub(r"\$\((\w+)\)", lambda m: environment[m.group(1)], a) for a in sync["args"]]
    assert PurePosixPath(sync["command"][-1]).name == SYNC_SCRIPT.name
    args[1] = str(out / args[1].lstrip("/"))
    return subprocess.run(
        ["sh", str(SYNC_SCRIPT), *args],
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def served_parts(root: Path) -> list[str]:
    return sorted(p.read_text() for p in root.rglob("part.txt"))


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (apt install rclone)")
def test_every_shard_pod_copies_a_distinct_shard_and_the_router_the_router_folder(
    renders: list[Render], tmp_path: Path
):
    seen = set()
    for render in sharded(renders):
        shards, routing = shard_set(render), router(render)
        key = yaml.safe_dump([sync_container(shards), sync_container(routing)])
        if key in seen:
            continue  # the same init containers as a render already run
        seen.add(key)
        count = shards["spec"]["replicas"]
        store = sharded_store(tmp_path / f"store-{len(seen)}", count)
        served = []
        for ordinal in range(count):
            for label in (True, False):
                out = tmp_path / f"{len(seen)}-{ordinal}-{label}"
                result = run_init_container(render, shards, ordinal, store, out, label=label)
                assert result.returncode == 0, f"{render.name}: pod {ordinal}: {result.stderr}"
                parts = served_parts(out)
                assert parts == [f"shard-{ordinal}"], f"{render.name}: pod {ordinal} copied {parts}"
                container = container_named(shards, ROUTER)
                index_path = retrieval_settings(render, container).index_path
                assert (out / str(index_path).lstrip("/") / "V" / "metadata.json").is_file()
            served.append(parts[0])
        assert len(set(served)) == count, f"{render.name}: shard pods share folders: {served}"
        # A pod beyond the shards the index was built with fails, naming what is missing.
        extra = run_init_container(render, shards, count, store, tmp_path / f"extra-{len(seen)}")
        assert extra.returncode != 0 and f"shard-{count}" in extra.stderr, extra.stderr
        out = tmp_path / f"{len(seen)}-router"
        result = run_init_container(render, routing, 0, store, out)
        assert result.returncode == 0, f"{render.name}: router: {result.stderr}"
        assert served_parts(out) == ["router"]
        index_path = retrieval_settings(render, container_named(routing, ROUTER)).index_path
        assert (out / str(index_path).lstrip("/") / "V" / "metadata.json").is_file(), "the router serves the copy"
    assert seen


# --- Order: the component gives the same objects wherever it is listed. ---------------------------------------


def normalized(objects: list[dict]) -> list[dict]:
    """Objects sorted by kind and name, each container's variables by name (the order components append them)."""
    objects = copy.deepcopy(objects)
    for obj in objects:
        template = obj.get("spec", {}).get("template", {})
        for container in template.get("spec", {}).get("containers", []):
            container["env"] = sorted(container.get("env", []), key=lambda item: item["name"])
    return sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))


def test_the_component_gives_the_same_objects_listed_first_or_last(k8s_check: CheckRun, tmp_path: Path):
    missing = missing_tools(tool_path())
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: cannot render here")
    others = ["autoscaling", "network-policies", "otel-collector"]
    name = "+".join(["gpu", *others, COMPONENT])
    assert name in k8s_check.renders, f"make k8s-check did not render {name}"
    folder = tmp_path / "first"
    folder.mkdir()
    components = [COMPONENT, *others]
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "gpu", folder)],
                "components": [os.path.relpath(K8S / "components" / c, folder) for c in components],
            }
        )
    )
    result = subprocess.run(
        ["kubectl", "kustomize", str(folder)],
        env={**os.environ, "PATH": tool_path()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (tmp_path / "first.yaml").write_text(result.stdout)
    first = load_render(tmp_path / "first.yaml")
    assert normalized(first.objects) == normalized(k8s_check.renders[name].objects)
    # Listed first, the router's targets still come after the variable they expand.
    assert shard_targets(first)[0].startswith(f"{SHARDS}-0.{SHARDS}.aisle.svc:")
