"""The manifests and the settings code agree, in both directions, in every rendered overlay and component
combination: every variable a service container gets is one the service reads (an unknown AISLE_<SERVICE>_*
variable makes it refuse to start), and every setting whose default is wrong in a pod is set."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from unittest import mock

import pytest

from services.core.settings import ServiceSettings, SettingsError, load_settings
from services.gateway.app import SIDE_EFFECTS_WAIT_S
from services.gateway.events import CLOSE_TIMEOUT_S as EVENT_LOG_CLOSE_TIMEOUT_S
from tests.k8s.manifests import (
    FROM_CLUSTER,
    SERVICES,
    Render,
    container_environment,
    environment_sources,
    grpc_target,
    pod_labels,
    pod_spec,
    settings_from,
)

#: Standard OpenTelemetry SDK variables the services' tracing reads (services/core/telemetry.py).
OTEL_VARIABLES = {
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
}
#: Downward-API variables, set only to be expanded into OTEL_RESOURCE_ATTRIBUTES.
K8S_PREFIX = "K8S_"

#: Settings a deployment must set whatever their defaults: where the server binds and listens (the probes,
#: Services and other services' targets depend on them), where its artefacts are, whom it calls, and how it
#: shuts down (the defaults drop calls during a rolling update).
EVERY_SERVICE = {"host", "port", "metrics_port", "drain_delay_s", "grace_period_s"}
REQUIRED = {
    "gateway": EVERY_SERVICE | {"retrieval_target", "ranking_target"},
    "retrieval": EVERY_SERVICE | {"index_path"},
    "ranking": EVERY_SERVICE | {"model_repository", "model_name"},
}
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


#: Settings with an unsafe default that only matter when another setting turns their feature on:
#: (service, setting) -> whether the loaded settings use it.
NEEDED_WHEN = {
    ("gateway", "redis_url"): lambda s: "redis" in (s.session_store, s.event_log),
    ("gateway", "event_log_path"): lambda s: s.event_log == "jsonl",
}


def unsafe_defaults(cls: type[ServiceSettings]) -> set[str]:
    """Settings whose default cannot be right in a pod: loopback addresses (another pod is never there) and
    relative paths (they depend on the image's working directory). New settings of that kind, such as a Triton
    target, are caught here without this test changing."""
    unsafe = set()
    for name, info in cls.model_fields.items():
        default = info.default
        if isinstance(default, str) and any(host in default for host in LOOPBACK):
            unsafe.add(name)
        if isinstance(default, Path) and not default.is_absolute():
            unsafe.add(name)
    return unsafe


def loaded_settings(render: Render, service: str, container: dict) -> ServiceSettings:
    """The service's settings as its own loader reads them from exactly the variables the pod gets."""
    variables = settings_from(render, service, container)
    with mock.patch.dict(os.environ, variables, clear=True):
        return load_settings(SERVICES[service])


def test_the_required_settings_exist_in_the_settings_classes():
    for service, cls in SERVICES.items():
        assert REQUIRED[service] <= set(cls.model_fields), (
            f"{cls.__name__} lost {sorted(REQUIRED[service] - set(cls.model_fields))}: update REQUIRED and k8s/"
        )


def test_every_variable_set_for_a_service_is_one_it_reads(renders: list[Render]):
    problems = []
    for render in renders:
        for service, _, container in render.service_containers():
            cls = SERVICES[service]
            known = {cls.env_name(name) for name in cls.model_fields}
            sources = environment_sources(render, container)
            for name, value in container_environment(render, container).items():
                where = f"{render.name}: {service} gets {name} ({sources.get(name)})"
                if name.upper().startswith("AISLE_"):
                    if name not in known:
                        problems.append(f"{where}, which {cls.__name__} does not have: the service would not start")
                elif name.startswith(K8S_PREFIX):
                    if value != FROM_CLUSTER:
                        problems.append(f"{where}: K8S_* variables are for the downward API only")
                elif name not in OTEL_VARIABLES:
                    problems.append(f"{where}, which no part of the service reads")
    assert not problems, "\n".join(problems)


def test_every_setting_a_deployment_needs_is_set(renders: list[Render]):
    problems = []
    for render in renders:
        for service, _, container in render.service_containers():
            cls = SERVICES[service]
            given = set(settings_from(render, service, container))
            settings = loaded_settings(render, service, container)
            for name in sorted(REQUIRED[service] | unsafe_defaults(cls)):
                needed = NEEDED_WHEN.get((service, name), lambda _: True)(settings)
                if needed and cls.env_name(name) not in given:
                    problems.append(f"{render.name}: {service} does not set {cls.env_name(name)}")
    assert not problems, "\n".join(problems)


def test_unsafe_defaults_are_found():
    """The rule above is not vacuous: the defaults it exists for are caught by it."""
    assert {"host", "retrieval_target", "ranking_target"} <= unsafe_defaults(SERVICES["gateway"])
    assert "index_path" in unsafe_defaults(SERVICES["retrieval"])
    assert "model_repository" in unsafe_defaults(SERVICES["ranking"])


def test_each_service_accepts_the_settings_its_pod_gets(renders: list[Render]):
    problems = []
    for render in renders:
        for service, _, container in render.service_containers():
            try:
                settings = loaded_settings(render, service, container)
            except SettingsError as error:
                problems.append(f"{render.name}: {service} would refuse to start:\n{error}")
                continue
            if settings.host not in ("0.0.0.0", "::", "[::]"):
                problems.append(f"{render.name}: {service} binds {settings.host}, unreachable from probes and peers")
    assert not problems, "\n".join(problems)


def test_shutdown_fits_in_the_termination_grace_period(renders: list[Render]):
    problems = []
    for render in renders:
        for service, workload, container in render.service_containers():
            settings = loaded_settings(render, service, container)
            period = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
            if settings.drain_delay_s <= 0:
                problems.append(f"{render.name}: {service} has no drain delay: calls fail while endpoints update")
            # The gateway then waits for the last answers' side effects (their exposures), then for its event log's
            # buffer, before it exits.
            after = SIDE_EFFECTS_WAIT_S + EVENT_LOG_CLOSE_TIMEOUT_S if service == "gateway" else 0
            if settings.drain_delay_s + settings.grace_period_s + after >= period:
                problems.append(
                    f"{render.name}: {service} drain {settings.drain_delay_s} s + grace {settings.grace_period_s} s "
                    f"+ {after} s for side effects >= terminationGracePeriodSeconds {period}: work in flight is killed"
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("service", "setting"),
    [("retrieval", "index_path"), ("ranking", "model_repository"), ("gateway", "catalog_path")],
)
def test_artefact_paths_are_volumes_an_init_container_fills(renders: list[Render], service: str, setting: str):
    for render in renders:
        workload = render.workload_of(service)
        assert workload is not None
        container = next(c for c in pod_spec(workload)["containers"] if c["name"] == service)
        path = PurePosixPath(str(getattr(loaded_settings(render, service, container), setting)))
        mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
        assert mounts, f"{render.name}: {service}'s {setting} {path} is on no volume"
        volume = mounts[0]["name"]
        fillers = [
            init["name"]
            for init in pod_spec(workload).get("initContainers", [])
            if any(m["name"] == volume and not m.get("readOnly") for m in init.get("volumeMounts", []))
        ]
        assert fillers, f"{render.name}: no init container writes {service}'s volume {volume}"
        assert mounts[0].get("readOnly"), f"{render.name}: {service} should mount its artefacts read-only"


def test_gateway_targets_are_headless_services_on_the_callees_ports(renders: list[Render]):
    for render in renders:
        gateway = render.workload_of("gateway")
        container = next(c for c in pod_spec(gateway)["containers"] if c["name"] == "gateway")
        settings = loaded_settings(render, "gateway", container)
        for callee, target in (("retrieval", settings.retrieval_target), ("ranking", settings.ranking_target)):
            host, port = grpc_target(target)
            service = render.get("Service", host)
            assert service is not None, f"{render.name}: the gateway calls {target}, but there is no Service {host}"
            assert service["spec"].get("clusterIP") == "None", (
                f"{render.name}: Service {host} must be headless so that the gateway balances across its pods"
            )
            ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            assert ports.get("grpc") == port, f"{render.name}: {target} is not Service {host}'s grpc port {ports}"
            workload = render.workload_of(callee)
            assert all(pod_labels(workload).get(k) == v for k, v in service["spec"]["selector"].items())
            callee_container = next(c for c in pod_spec(workload)["containers"] if c["name"] == callee)
            assert loaded_settings(render, callee, callee_container).port == port, (
                f"{render.name}: the gateway calls {callee} on {port}, but {callee} listens elsewhere"
            )


def test_ranking_scores_on_triton_exactly_where_triton_runs(renders: list[Render]):
    for render in renders:
        ranking = render.workload_of("ranking")
        container = next(c for c in pod_spec(ranking)["containers"] if c["name"] == "ranking")
        settings = loaded_settings(render, "ranking", container)
        triton = render.workload_of("triton")
        if triton is None:
            assert settings.backend == "onnxruntime", f"{render.name}: ranking points at a Triton that is not there"
            continue
        assert settings.backend == "triton", f"{render.name}: Triton runs, but ranking scores in-process"
        (target,) = settings.triton_target_list
        host, port = grpc_target(target)
        service = render.get("Service", host)
        assert service is not None and service["spec"].get("clusterIP") == "None", f"{render.name}: {target}"
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]}.get("grpc") == port
        assert all(pod_labels(triton).get(k) == v for k, v in service["spec"]["selector"].items())


def test_the_gateway_sends_retrieval_and_ranking_no_more_than_they_accept(renders: list[Render]):
    """A longer history or more candidates than a callee accepts is refused on every call: answers degrade as if
    the callee were down. The limits live in three services' settings; every rendered combination keeps them in
    step (each pod of a service: the router and every shard of a sharded retrieval)."""
    problems = []
    for render in renders:
        loaded: dict[str, list[ServiceSettings]] = {}
        for service, _, container in render.service_containers():
            loaded.setdefault(service, []).append(loaded_settings(render, service, container))
        for gateway in loaded.get("gateway", []):
            for callee in ("retrieval", "ranking"):
                for settings in loaded.get(callee, []):
                    if gateway.max_history > settings.max_history:
                        problems.append(f"{render.name}: gateway max_history {gateway.max_history} > {callee}'s")
            for ranking in loaded.get("ranking", []):
                if gateway.ranking_max_candidates > ranking.max_candidates:
                    problems.append(f"{render.name}: gateway ranking_max_candidates > ranking's max_candidates")
        assert loaded.get("gateway") and loaded.get("ranking"), f"{render.name}: no gateway or ranking pod"
    assert not problems, "\n".join(problems)
