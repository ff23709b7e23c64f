"""What every rendered combination must hold beyond schema validity: restricted pod security, resources,
references that resolve, disruption budgets and spread, and what each overlay and component promises."""

from __future__ import annotations

import yaml

from services.core.keepalive import KEEPALIVE_TIME_MS
from tests.k8s.manifests import (
    CLUSTER_SCOPED,
    K8S,
    NAME_LABEL,
    Render,
    all_containers,
    container_environment,
    container_named,
    named_ports,
    pod_labels,
    pod_spec,
    selects,
)

GPU = "nvidia.com/gpu"


def test_pods_meet_the_restricted_pod_security_standard(renders: list[Render]):
    problems = []
    for render in renders:
        for workload in render.workloads():
            spec, name = pod_spec(workload), f"{render.name}: {workload['metadata']['name']}"
            pod = spec.get("securityContext", {})
            if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
                problems.append(f"{name} shares a host namespace")
            if any("hostPath" in volume for volume in spec.get("volumes", [])):
                problems.append(f"{name} mounts a hostPath")
            if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{name} has no RuntimeDefault seccomp profile")
            for container in all_containers(workload):
                context = container.get("securityContext", {})
                where = f"{name}/{container['name']}"
                if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
                    problems.append(f"{where} may run as root")
                if context.get("runAsUser", pod.get("runAsUser")) in (None, 0):
                    problems.append(f"{where} has no numeric non-root user")
                if context.get("allowPrivilegeEscalation") is not False or context.get("privileged"):
                    problems.append(f"{where} allows privilege escalation")
                if context.get("capabilities", {}).get("drop") != ["ALL"] or context.get("capabilities", {}).get("add"):
                    problems.append(f"{where} does not drop all capabilities")
                if context.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{where} has a writable root filesystem")
        for namespace in render.of_kind("Namespace"):
            labels = namespace["metadata"].get("labels", {})
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                problems.append(f"{render.name}: namespace {namespace['metadata']['name']} does not enforce restricted")
    assert not problems, "\n".join(problems)


def test_every_container_has_cpu_and_memory_requests_and_limits(renders: list[Render]):
    problems = []
    for render in renders:
        for workload in render.workloads():
            for container in all_containers(workload):
                resources = container.get("resources", {})
                for part in ("requests", "limits"):
                    missing = {"cpu", "memory"} - set(resources.get(part, {}))
                    if missing:
                        problems.append(
                            f"{render.name}: {workload['metadata']['name']}/{container['name']} "
                            f"has no {part} for {sorted(missing)}"
                        )
    assert not problems, "\n".join(problems)


def test_every_image_is_pinned_to_a_version(renders: list[Render]):
    problems = []
    for render in renders:
        for workload in render.workloads():
            for container in all_containers(workload):
                image = container["image"]
                name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
                if not name or "/" in tag or tag in ("", "latest"):
                    problems.append(f"{render.name}: {workload['metadata']['name']}/{container['name']} runs {image}")
    assert not problems, "\n".join(problems)


def test_pods_get_their_own_account_and_neither_api_tokens_nor_service_links(renders: list[Render]):
    problems = []
    for render in renders:
        for workload in render.workloads():
            spec, name = pod_spec(workload), f"{render.name}: {workload['metadata']['name']}"
            account = spec.get("serviceAccountName")
            if account in (None, "default") or render.get("ServiceAccount", account) is None:
                problems.append(f"{name} runs as {account!r}, not an account of its own in the render")
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{name} mounts an API token it does not need")
            # Service links would put <SERVICE>_PORT=tcp://... variables into the environment; under a name
            # prefix they collide with the services' strict AISLE_<SERVICE>_* settings.
            if spec.get("enableServiceLinks") is not False:
                problems.append(f"{name} gets service-link variables")
    assert not problems, "\n".join(problems)


def test_references_between_objects_resolve(renders: list[Render]):
    problems = []
    for render in renders:
        namespaces = {n["metadata"]["name"] for n in render.of_kind("Namespace")}
        for obj in render.objects:
            if obj["kind"] not in CLUSTER_SCOPED and obj["metadata"].get("namespace") not in namespaces:
                problems.append(f"{render.name}: {obj['kind']} {obj['metadata']['name']} is outside {namespaces}")
        for workload in render.workloads():
            name = f"{render.name}: {workload['metadata']['name']}"
            for volume in pod_spec(workload).get("volumes", []):
                if "configMap" in volume and render.get("ConfigMap", volume["configMap"]["name"]) is None:
                    problems.append(f"{name} mounts missing ConfigMap {volume['configMap']['name']}")
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim and render.get("PersistentVolumeClaim", claim) is None:
                    problems.append(f"{name} mounts missing claim {claim}")
            for container in all_containers(workload):
                try:
                    container_environment(render, container)
                except AssertionError as error:
                    problems.append(f"{name}/{container['name']}: {error}")
                mounted = {v["name"] for v in pod_spec(workload).get("volumes", [])}
                for mount in container.get("volumeMounts", []):
                    if mount["name"] not in mounted:
                        problems.append(f"{name}/{container['name']} mounts undeclared volume {mount['name']}")
        for hpa in render.of_kind("HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]
            if render.get(target["kind"], target["name"]) is None:
                problems.append(f"{render.name}: HPA {hpa['metadata']['name']} scales missing {target}")
        for pdb in render.of_kind("PodDisruptionBudget"):
            if not any(selects(pdb["spec"]["selector"], pod_labels(w)) for w in render.workloads()):
                problems.append(f"{render.name}: PDB {pdb['metadata']['name']} selects no pods")
    assert not problems, "\n".join(problems)


def test_long_running_workloads_have_a_disruption_budget_and_spread(renders: list[Render]):
    problems = []
    for render in renders:
        for workload in render.of_kind("Deployment", "StatefulSet"):
            name = f"{render.name}: {workload['metadata']['name']}"
            labels = pod_labels(workload)
            budgets = [p for p in render.of_kind("PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
            if len(budgets) != 1:
                problems.append(f"{name} has {len(budgets)} PodDisruptionBudgets")
            spread = pod_spec(workload).get("topologySpreadConstraints", [])
            if not any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread):
                problems.append(f"{name} does not spread across nodes")
            if workload["kind"] == "StatefulSet":
                # No surge: a StatefulSet replaces a pod by deleting it first. One at a time (the default), so
                # that a rollout takes at most one index shard away, and rolling at all (not OnDelete).
                update = workload["spec"].get("updateStrategy", {})
                if update.get("type", "RollingUpdate") != "RollingUpdate":
                    problems.append(f"{name} does not roll out changes by itself ({update})")
                elif update.get("rollingUpdate", {}).get("maxUnavailable", 1) != 1:
                    problems.append(f"{name} may replace more than one pod at a time ({update})")
            elif workload["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") != 0:
                problems.append(f"{name} may drop below its capacity during a rollout (maxUnavailable != 0)")
    assert not problems, "\n".join(problems)


def test_gpu_overlay_runs_triton_on_gpu_nodes_with_the_gpu_config(renders: list[Render]):
    checked = 0
    for render in renders:
        if render.overlay != "gpu" or "embedded-ranking" in render.components:
            continue
        triton = render.workload_of("triton")
        container = container_named(triton, "triton")
        spec = pod_spec(triton)
        assert str(container["resources"]["limits"].get(GPU)) == "1", f"{render.name}: Triton has no GPU"
        assert any(t.get("key") == GPU for t in spec.get("tolerations", [])), f"{render.name}: no GPU toleration"
        assert spec.get("nodeSelector"), f"{render.name}: Triton is not pinned to the GPU pool"
        assert "--model-control-mode=explicit" in container["args"]
        # The ranking pods' keepalive pings on idle connections are accepted, not answered with GOAWAY.
        assert "--grpc-keepalive-permit-without-calls=1" in container["args"]
        [interval] = [a for a in container["args"] if a.startswith("--grpc-http2-min-recv-ping-interval-without-data=")]
        assert int(interval.split("=")[1]) <= KEEPALIVE_TIME_MS, f"{render.name}: {interval}"
        assert not any(a.startswith("--model-config-name") for a in container["args"]), (
            "the gpu overlay serves the default config.pbtxt (KIND_GPU)"
        )
        for workload in render.workloads():
            for other in all_containers(workload):
                if other is not container:
                    assert GPU not in other.get("resources", {}).get("limits", {}), f"{render.name}: {other['name']}"
        checked += 1
    assert checked, "no gpu render with Triton"


def test_cpu_overlay_has_no_triton_and_no_gpu_and_seeds_its_artefacts(renders: list[Render]):
    cpu = [r for r in renders if r.overlay == "cpu"]
    assert cpu, "no cpu render"
    for render in cpu:
        leftovers = [o for o in render.objects if o["metadata"].get("labels", {}).get(NAME_LABEL) == "triton"]
        # The network-policies component, added on top of the overlay, still brings Triton's policy: it selects
        # no pods, so it has no effect. Nothing else of Triton's may stay.
        assert all(o["kind"] == "NetworkPolicy" for o in leftovers), f"{render.name}: {leftovers}"
        assert not [w for w in render.workloads() if selects({NAME_LABEL: "triton"}, pod_labels(w))]
        assert GPU not in yaml.safe_dump(render.objects), f"{render.name} asks for a GPU"
        seed = render.get("Job", "seed-artifacts")
        assert seed is not None, f"{render.name}: nothing trains the artefacts"
        claim = next(v for v in pod_spec(seed)["volumes"] if "persistentVolumeClaim" in v)
        seed_mount = next(m for m in pod_spec(seed)["containers"][0]["volumeMounts"] if m["name"] == claim["name"])
        for service in ("retrieval", "ranking"):
            workload = render.workload_of(service)
            assert workload["spec"].get("replicas", 1) == 1
            sync = pod_spec(workload)["initContainers"][0]
            store = container_environment(render, sync)["ARTIFACTS_URI"]
            volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
            mounts = [m for m in sync["volumeMounts"] if m["mountPath"] == store]
            assert mounts, f"{render.name}: {service}'s sync container does not mount {store}"
            volume = volumes[mounts[0]["name"]]["persistentVolumeClaim"]
            assert volume["claimName"] == claim["persistentVolumeClaim"]["claimName"]
            assert seed_mount["mountPath"] == store, "the Job writes where the services read"


def ingress_sources(policy: dict, port: str) -> list[dict]:
    """The peers a NetworkPolicy lets in on ``port``."""
    rules = policy.get("ingress", [])
    return [peer for rule in rules if any(p["port"] == port for p in rule["ports"]) for peer in rule["from"]]


def test_network_policies_deny_by_default_and_open_only_the_documented_paths(renders: list[Render]):
    checked = 0
    for render in renders:
        if "network-policies" not in render.components:
            continue
        policies = {p["metadata"]["name"]: p["spec"] for p in render.of_kind("NetworkPolicy")}
        deny = policies["default-deny"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert not deny.get("ingress") and not deny.get("egress")

        assert {"namespaceSelector": {}} in ingress_sources(policies["gateway"], "grpc"), "callers reach the gateway"
        for callee in ("retrieval", "ranking"):
            assert ingress_sources(policies[callee], "grpc") == [
                {"podSelector": {"matchLabels": {NAME_LABEL: "gateway"}}}
            ]
        # Stock updates: only pods labelled as availability writers (any namespace), and only to retrieval.
        writer = {"aisle.dev/availability-writer": "true"}
        assert ingress_sources(policies["retrieval-availability-writers"], "grpc") == [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": writer}}
        ]
        writer_policy = policies["retrieval-availability-writers"]["podSelector"]
        assert writer_policy == {"matchLabels": {NAME_LABEL: "retrieval"}}, (
            f"{render.name}: writers reach retrieval only"
        )
        assert policies["availability-writer"]["podSelector"] == {"matchLabels": writer}
        if "triton" in policies:
            for port in ("grpc", "http"):
                from_ranking = [{"podSelector": {"matchLabels": {NAME_LABEL: "ranking"}}}]
                assert ingress_sources(policies["triton"], port) == from_ranking, f"{render.name}: Triton's {port}"
        # The artefact sync gets its cloud credentials: workload identity's node endpoints are reachable.
        credential_peers = [
            (peer["ipBlock"]["cidr"], port["port"])
            for rule in policies["allow-artifact-store"]["egress"]
            for peer in rule["to"]
            for port in rule["ports"]
        ]
        for endpoint in [("169.254.169.252/32", 988), ("169.254.170.23/32", 80)]:
            assert endpoint in credential_peers, f"{render.name}: no egress to {endpoint}"
        # Never the cloud's instance metadata (on AWS, the node role's credentials).
        assert not [peer for peer in credential_peers if peer[0] == "169.254.169.254/32"], render.name
        # Named ports in the policies exist on the pods they protect.
        for name, spec in policies.items():
            protected = [w for w in render.workloads() if selects(spec["podSelector"], pod_labels(w))]
            for rule in spec.get("ingress", []):
                for port in rule.get("ports", []):
                    if isinstance(port["port"], str):
                        for workload in protected:
                            declared = {n for c in pod_spec(workload)["containers"] for n in named_ports(c)}
                            assert port["port"] in declared, f"{render.name}: policy {name} port {port['port']}"
        checked += 1
    assert checked, "no render with the network-policies component"


def test_autoscaled_workloads_leave_replicas_to_the_autoscaler(renders: list[Render]):
    adapter = yaml.safe_load((K8S / "components/autoscaling-triton/prometheus-adapter-rules.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    checked = 0
    for render in renders:
        for hpa in render.of_kind("HorizontalPodAutoscaler"):
            assert hpa["apiVersion"] == "autoscaling/v2"
            target = render.get(hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
            assert "replicas" not in target["spec"], f"{render.name}: apply would fight the HPA over replicas"
            assert hpa["spec"]["minReplicas"] >= 2, f"{render.name}: an autoscaled service keeps redundancy"
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Pods":
                    assert metric["pods"]["metric"]["name"] in served, "the adapter rule serves the HPA's metric"
            checked += 1
    assert checked, "no render with an HPA"


def test_traces_leave_the_pods_only_with_the_tracing_component(renders: list[Render]):
    checked = 0
    for render in renders:
        traced = "otel-collector" in render.components
        collector = render.get("Service", "otel-collector")
        ports = {p["name"]: p["port"] for p in collector["spec"]["ports"]} if traced else {}
        for service, _, container in render.service_containers():
            environment = container_environment(render, container)
            endpoint = environment.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if not traced:
                assert endpoint is None, f"{render.name}: {service} exports traces to {endpoint}"
                continue
            assert endpoint == f"http://otel-collector:{ports['otlp-grpc']}", f"{render.name}: {service}"
            assert environment["OTEL_TRACES_SAMPLER"].startswith("parentbased_"), "follow the caller's decision"
        triton = render.workload_of("triton")
        if triton is not None:
            environment = container_environment(render, container_named(triton, "triton"))
            assert (environment["TRITON_TRACE_LEVEL"] != "OFF") == traced, f"{render.name}: Triton's tracing"
            if traced:
                url = f"http://otel-collector:{ports['otlp-http']}/v1/traces"
                assert environment["TRITON_OTLP_TRACES_URL"] == url
        checked += traced
    assert checked, "no render with the otel-collector component"
