"""Container ports, probes, Services and scrape annotations match the ports the services are told to use."""

from __future__ import annotations

import os
from unittest import mock

from services.core.settings import load_settings
from tests.k8s.manifests import (
    SERVICES,
    Render,
    container_named,
    named_ports,
    pod_labels,
    pod_spec,
    pod_template,
    selects,
    settings_from,
)

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def settings_of(render: Render, service: str, container: dict):
    with mock.patch.dict(os.environ, settings_from(render, service, container), clear=True):
        return load_settings(SERVICES[service])


def test_container_ports_are_the_configured_ports(renders: list[Render]):
    problems = []
    for render in renders:
        for service, workload, container in render.service_containers():
            settings = settings_of(render, service, container)
            ports = named_ports(container)
            expected = {"grpc": settings.port, "metrics": settings.metrics_port}
            if ports != expected:
                problems.append(f"{render.name}: {service} declares ports {ports}, its settings say {expected}")
            annotations = pod_template(workload)["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/port") != str(settings.metrics_port):
                problems.append(f"{render.name}: {service}'s prometheus.io/port is not its metrics port")
    assert not problems, "\n".join(problems)


def test_grpc_probes_ask_the_health_service_on_the_serving_port(renders: list[Render]):
    problems = []
    for render in renders:
        for service, _, container in render.service_containers():
            port = settings_of(render, service, container).port
            for kind in PROBES:
                probe = container.get(kind)
                if probe is None:
                    problems.append(f"{render.name}: {service} has no {kind}")
                elif probe.get("grpc", {}).get("port") != port:
                    problems.append(f"{render.name}: {service}'s {kind} is not a gRPC probe on {port}: {probe}")
                elif probe["grpc"].get("service", ""):
                    problems.append(f"{render.name}: {service}'s {kind} should ask for the overall health ('')")
    assert not problems, "\n".join(problems)


def test_startup_probes_allow_for_slow_loads_and_liveness_outlasts_shutdown(renders: list[Render]):
    for render in renders:
        for service, _, container in render.service_containers():
            startup, liveness = container["startupProbe"], container["livenessProbe"]
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            assert budget >= 120, f"{render.name}: {service} gets only {budget} s to load"
            settings = settings_of(render, service, container)
            window = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
            assert window > settings.drain_delay_s + settings.grace_period_s, (
                f"{render.name}: {service}'s liveness probe could restart it while it drains (NOT_SERVING)"
            )


def test_the_gateway_waits_at_start_up_as_long_as_retrieval_may_take_to_copy_and_load_its_index(renders):
    """The gateway is SERVING only once retrieval answers: a startup window no longer than retrieval's own has
    kubelet restart every gateway of a cold deploy while retrieval still copies a large index (its init container
    is not probed), and the restarts back off for minutes after retrieval is ready."""
    for render in renders:
        budgets = {}
        for service, _, container in render.service_containers():
            startup = container["startupProbe"]
            budgets[service] = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        assert budgets["gateway"] >= 2 * budgets["retrieval"], (render.name, budgets)


def test_a_rollout_is_given_up_on_only_after_its_pods_startup_window(renders):
    """A Deployment's progress deadline (600 s unless set) shorter than its pods' startup window marks a rollout
    failed (`rollout status` exits) while its pods are still allowed to start."""
    problems = []
    for render in renders:
        for workload in render.of_kind("Deployment"):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                startup = container.get("startupProbe")
                if startup is None:
                    continue
                window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
                deadline = workload["spec"].get("progressDeadlineSeconds", 600)
                if deadline < window + 30:
                    name = workload["metadata"]["name"]
                    problems.append(f"{render.name}: {name} gives up at {deadline} s, its pods may start for {window}")
    assert not problems, "\n".join(problems)


def test_every_service_port_reaches_a_declared_container_port(renders: list[Render]):
    problems = []
    for render in renders:
        for service in render.of_kind("Service"):
            name = service["metadata"]["name"]
            selected = [w for w in render.workloads() if selects(service["spec"].get("selector", {}), pod_labels(w))]
            if not selected:
                problems.append(f"{render.name}: Service {name} selects no pods")
                continue
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for workload in selected:
                    declared = [p for c in pod_spec(workload)["containers"] for p in c.get("ports", [])]
                    by_name = {p.get("name"): p["containerPort"] for p in declared}
                    number = by_name.get(target) if isinstance(target, str) else target
                    if number not in {p["containerPort"] for p in declared}:
                        problems.append(
                            f"{render.name}: Service {name} port {port['name']} targets {target}, "
                            f"which {workload['metadata']['name']} does not declare"
                        )
                    headless = service["spec"].get("clusterIP") == "None"
                    if headless and number != port["port"]:
                        problems.append(
                            f"{render.name}: headless Service {name} port {port['name']} must equal "
                            "the container port (clients connect to pod addresses)"
                        )
    assert not problems, "\n".join(problems)


def test_grpc_service_ports_are_named_grpc(renders: list[Render]):
    for render in renders:
        for name in (*SERVICES, "triton"):
            service = render.get("Service", name)
            if name == "triton" and service is None:
                continue
            assert service is not None, f"{render.name}: no Service {name}"
            grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
            assert grpc and grpc[0].get("appProtocol") == "kubernetes.io/h2c", f"{render.name}: {name}'s grpc port"


def test_triton_listens_where_its_ports_probes_and_clients_say(renders: list[Render]):
    with_triton = [r for r in renders if r.workload_of("triton") is not None]
    assert with_triton, "no render runs Triton"
    for render in with_triton:
        container = container_named(render.workload_of("triton"), "triton")
        ports = named_ports(container)
        arguments = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if a.startswith("--"))
        for port in ("grpc", "http", "metrics"):
            assert int(arguments[f"{port}-port"]) == ports[port], f"{render.name}: Triton's --{port}-port"
        for kind in PROBES:
            probe = container[kind]["httpGet"]
            assert probe["port"] == "http" and probe["path"].startswith("/v2/health/"), f"{render.name}: {kind}"
        service = render.get("Service", "triton")
        assert service["spec"].get("clusterIP") == "None", "ranking balances across Triton pods: headless"
        annotations = pod_template(render.workload_of("triton"))["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"])
