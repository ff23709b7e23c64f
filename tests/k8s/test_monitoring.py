"""k8s/monitoring: the PodMonitor finds every Aisle pod's metrics port; the rules read only metrics and labels the
services export, pass `promtool check rules`, fire as tests/k8s/monitoring_rules_test.yaml says (`promtool test
rules`), sit below the gateway's budget, and each alert says where to look."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from services.core.metrics import LATENCY_BUCKETS, RpcMetrics
from services.gateway.components.scorers import RankingParams
from services.gateway.components.sources import RetrievalSourcesParams
from services.gateway.pipeline import PipelineMetrics
from services.ranking.app import RankingMetrics
from tests.k8s.manifests import K8S, NAME_LABEL, Render, named_ports, pod_labels, pod_spec, selects

MONITORING = K8S / "monitoring"
RULE_TESTS = Path(__file__).with_name("monitoring_rules_test.yaml")
DASHBOARD = MONITORING / "dashboards" / "aisle.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install it (Debian's prometheus package; .ci/run does) to check the alert rules",
)
#: Labels Prometheus (the operator's PodMonitor) adds to every scraped series, and the PodMonitor's own `app`.
TARGET_LABELS = {"namespace", "pod", "container", "job", "endpoint", "instance", "app"}
#: Triton's metrics, which the rules read and Triton (not Aisle's code) exports: k8s/README.md lists them.
TRITON_METRICS = {"nv_inference_queue_duration_us", "nv_inference_request_success", "nv_inference_request_failure"}


def rules_spec() -> dict:
    return yaml.safe_load((MONITORING / "rules.yaml").read_text(encoding="utf-8"))["spec"]


def all_rules(spec: dict) -> list[dict]:
    return [rule for group in spec["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in all_rules(rules_spec()) if "alert" in rule}


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the services' own metrics export -> the labels it carries."""
    registry = CollectorRegistry()
    ranking = RankingMetrics(registry)  # with the ArtifactMetrics every service has
    owners = [PipelineMetrics(registry), ranking, ranking.artifacts, RpcMetrics(registry, "gateway")]
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    found: dict[str, set[str]] = {}
    for owner in owners:
        for metric in vars(owner).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            (family,) = metric.describe()
            labels = set(metric._labelnames) | ({"le"} if family.type == "histogram" else set())
            for suffix in suffixes[family.type]:
                found[family.name + suffix] = labels
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def write_rules(spec: dict, path: Path, annotations: bool = True) -> None:
    """The PrometheusRule's groups as a plain rule file, as the operator hands them to Prometheus."""
    groups = yaml.safe_load(yaml.safe_dump(spec))
    if not annotations:  # the rule tests check labels and timing; templates are checked by `promtool check rules`
        for rule in all_rules(groups):
            rule.pop("annotations", None)
    path.write_text(yaml.safe_dump(groups), encoding="utf-8")


def rule_tests(tmp_path: Path, spec: dict) -> subprocess.CompletedProcess:
    write_rules(spec, tmp_path / "rules.yaml", annotations=False)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)


@needs_promtool
def test_the_rules_and_their_templates_pass_promtool_check(tmp_path):
    spec = rules_spec()
    write_rules(spec, tmp_path / "rules.yaml")
    checked = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(all_rules(spec))} rules found" in checked.stdout


@needs_promtool
def test_the_alerts_fire_when_and_only_when_the_rule_tests_say(tmp_path):
    tested = rule_tests(tmp_path, rules_spec())
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_a_changed_threshold_fails_the_rule_tests(tmp_path):
    """The rule tests can fail: the degraded-answers warning at 50 % instead of 1 % misses the slow gateway's 10 %."""
    spec = rules_spec()
    (rule,) = [r for r in all_rules(spec) if r.get("alert") == "AisleDegradedAnswers"]
    assert rule["expr"].endswith("> 0.01")
    rule["expr"] = rule["expr"].replace("> 0.01", "> 0.5")
    tested = rule_tests(tmp_path, spec)
    assert tested.returncode != 0 and "AisleDegradedAnswers" in tested.stdout + tested.stderr


def test_every_metric_and_label_the_rules_read_is_exported():
    exported = exported_metrics()
    read = []
    for rule in all_rules(rules_spec()):
        expr = re.sub(r"\s+", " ", rule["expr"])
        for name, selector in re.findall(r"\b((?:aisle|nv)_[a-z_]+)\b(?:\{([^}]*)\})?", expr):
            read.append(name)
            if name in TRITON_METRICS:
                continue
            assert name in exported, f"{rule.get('alert') or rule['record']} reads {name}, which no service exports"
            labels = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
            assert labels <= exported[name] | TARGET_LABELS, f"{name} has no labels {labels - exported[name]}"
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            names = [n for n in re.findall(r"\b(aisle_[a-z_]+)\b", expr) if n in exported]
            for name in names:
                assert labels <= exported[name] | TARGET_LABELS, f"{rule}: {name} lacks {labels - exported[name]}"
    assert {"aisle_gateway_stage_seconds_bucket", "aisle_grpc_server_handled_total"} <= set(read)
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in TRITON_METRICS)


def readme_anchors() -> set[str]:
    """GitHub's anchors of k8s/README.md's headings."""
    headings = re.findall(r"^#+ (.+)$", (K8S / "README.md").read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section_that_exists():
    anchors = readme_anchors()
    for name, rule in alerts().items():
        assert rule.get("for"), f"{name} fires on a single evaluation"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "k8s/README.md" and anchor in anchors, f"{name}: no section {annotations['runbook']}"


def budget_s() -> float:
    settings = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "config" / "gateway.env").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    return float(settings["AISLE_GATEWAY_TOTAL_BUDGET_MS"]) / 1000


def threshold(expr: str, selector: str) -> float:
    (value,) = re.findall(re.escape(selector) + r"\s*>\s*([0-9.]+)", re.sub(r"\s+", " ", expr))
    return float(value)


def test_latency_alerts_fire_before_the_budget_and_the_stage_slices_cut_answers():
    """An alert past the point where the gateway already cuts answers would say nothing the degraded alerts do not."""
    budget, rules = budget_s(), alerts()
    recommend = 'aisle:grpc_server_handling_seconds:p99_5m{service="gateway", method="Recommend"}'
    warning = threshold(rules["AisleRecommendLatencyHigh"]["expr"], recommend)
    critical = threshold(rules["AisleRecommendLatencyCritical"]["expr"], recommend)
    assert warning < critical < budget
    stages = rules["AisleStageLatencyHigh"]["expr"]
    retrieval_slice = RetrievalSourcesParams.model_fields["share"].default * budget
    assert threshold(stages, 'p99_5m{stage="retrieval"}') < retrieval_slice
    assert threshold(stages, 'p99_5m{stage="scoring"}') < RankingParams.model_fields["share"].default * budget


def test_every_latency_threshold_is_a_bucket_edge_of_the_histograms():
    """A p99 is interpolated within its bucket: a threshold between two edges (25 ms, between 20 and 30) fired on a
    p99 of 21 ms, read as 29.9."""
    edges = {round(edge, 6) for edge in LATENCY_BUCKETS}
    compared = [
        (name, float(value))
        for name, rule in alerts().items()
        for value in re.findall(r"p99_5m(?:\{[^}]*\})?\s*>\s*([0-9.]+)", re.sub(r"\s+", " ", rule["expr"]))
    ]
    assert len(compared) >= 5  # the Recommend warning and critical, the three stage groups
    assert [(name, value) for name, value in compared if round(value, 6) not in edges] == []


def test_the_pod_monitor_scrapes_every_pod_that_asks_to_be_scraped(renders: list[Render]):
    (monitor,) = yaml.safe_load_all((MONITORING / "podmonitors.yaml").read_text(encoding="utf-8"))
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    seen = set()
    for render in renders:
        for workload in render.workloads():
            annotations = workload["spec"]["template"].get("metadata", {}).get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                continue
            labels = pod_labels(workload)
            seen.add(labels[NAME_LABEL])
            assert selects(monitor["spec"]["selector"], labels), f"{render.name}: {labels[NAME_LABEL]} not selected"
            ports = {name: port for c in pod_spec(workload)["containers"] for name, port in named_ports(c).items()}
            assert str(ports.get(endpoint["port"])) == annotations["prometheus.io/port"], render.name
            assert endpoint["path"] == annotations["prometheus.io/path"]
    assert {"gateway", "retrieval", "ranking", "triton", "retrieval-shard"} <= seen


def test_the_monitoring_kustomization_renders_in_the_aisle_namespace():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (>= 1.27, with kustomize) not found: k8s/monitoring cannot be rendered here")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [obj for obj in yaml.safe_load_all(rendered.stdout) if obj]
    assert sorted(obj["kind"] for obj in objects) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    for obj in objects:
        if obj["kind"] != "ConfigMap":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["metadata"]["namespace"] == "aisle"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aisle"
    (dashboard,) = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # what Grafana's dashboard sidecar loads
    assert json.loads(dashboard["data"]["aisle.json"]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_dashboard_reads_recorded_series_and_exported_metrics_of_the_chosen_namespace():
    recorded = {rule["record"] for rule in all_rules(rules_spec()) if "record" in rule}
    exported = exported_metrics()
    queries = dashboard_queries()
    assert len(queries) >= 8
    for expr in queries:
        assert 'namespace="$namespace"' in expr, expr
        assert set(re.findall(r"\b(aisle:[a-z_:0-9]+)", expr)) <= recorded, expr
        assert set(re.findall(r"\b(aisle_[a-z_]+)\b", expr)) <= set(exported), expr


def test_the_dashboards_panels_have_their_own_places():
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = [
        (x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in panels)


@needs_promtool
def test_the_dashboards_queries_parse(tmp_path):
    """promtool checks each query as a recording rule's expression (the namespace variable filled in)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$namespace", "aisle")}
        for i, expr in enumerate(dashboard_queries())
    ]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


RECOMMEND = 'namespace="aisle", service="gateway", method="Recommend"'
TRACK_EVENTS = 'namespace="aisle", service="gateway", method="TrackEvents"'
#: A busy namespace's series for every metric the dashboard reads: each panel query must find data in them.
DASHBOARD_SERIES = [
    (
        'aisle_grpc_server_handled_total{namespace="aisle", service="gateway", method="Recommend", code="OK"}',
        "0+600x20",
    ),
    (
        'aisle_grpc_server_handled_total{namespace="aisle", service="gateway", method="Recommend", code="UNAVAILABLE"}',
        "0+6x20",
    ),
    ('aisle_grpc_server_handled_total{namespace="aisle", service="ranking", method="Rank", code="OK"}', "0+600x20"),
    # A failing TrackEvents: not a Recommend error (the panel of those must not count it).
    (f'aisle_grpc_server_handled_total{{{TRACK_EVENTS}, code="UNAVAILABLE"}}', "0+600x20"),
    (f'aisle_grpc_server_handling_seconds_bucket{{{RECOMMEND}, le="0.01"}}', "0+600x20"),
    (f'aisle_grpc_server_handling_seconds_bucket{{{RECOMMEND}, le="+Inf"}}', "0+606x20"),
    ('aisle_gateway_stage_seconds_bucket{namespace="aisle", stage="retrieval", le="0.005"}', "0+600x20"),
    ('aisle_gateway_stage_seconds_bucket{namespace="aisle", stage="retrieval", le="+Inf"}', "0+600x20"),
    ('aisle_gateway_degraded_total{namespace="aisle", reason="DEGRADATION_REASON_RANKING_TIMEOUT"}', "0+3x20"),
    (
        'aisle_ranking_fallback_total{namespace="aisle", pod="ranking-0", reason="INFERENCE_SERVER_UNAVAILABLE"}',
        "0+1x20",
    ),
    ('aisle_gateway_candidates_bucket{namespace="aisle", policy="home", le="500"}', "0+600x20"),
    ('aisle_gateway_candidates_bucket{namespace="aisle", policy="home", le="+Inf"}', "0+600x20"),
    (
        'aisle_artifact_serving{namespace="aisle", pod="ranking-0", service="ranking", kind="model", version="3"}',
        "1x20",
    ),
    ('aisle_artifact_refused_total{namespace="aisle", pod="ranking-0", service="ranking", kind="model"}', "1x20"),
]


@needs_promtool
def test_every_dashboard_query_finds_data_in_a_busy_namespace(tmp_path):
    """Parsing is not enough: a query joining two series on labels they do not share (server errors/s from a ratio
    by service times a rate by namespace) parses and always shows "No data"."""
    spec = rules_spec()
    write_rules(spec, tmp_path / "rules.yaml", annotations=False)
    queries = dashboard_queries()
    (recommend_errors,) = [i for i, q in enumerate(queries) if 'method="Recommend", code=~' in q]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$namespace", "aisle")} for i, q in enumerate(queries)
    ]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    test = {
        "rule_files": ["rules.yaml", "dashboard.yaml"],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": values} for series, values in DASHBOARD_SERIES],
                "promql_expr_test": [
                    {"expr": f"count(dashboard:query_{i}) > bool 0", "eval_time": "15m", "exp_samples": [{"value": 1}]}
                    for i in range(len(queries))
                ]
                + [  # Recommend's server errors: 6 a minute, whatever the other methods do
                    {
                        "expr": f"dashboard:query_{recommend_errors}",
                        "eval_time": "15m",
                        "exp_samples": [
                            {"labels": f'dashboard:query_{recommend_errors}{{namespace="aisle"}}', "value": 0.1}
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "dashboard_test.yaml").write_text(yaml.safe_dump(test))
    tested = run_promtool("test", "rules", "dashboard_test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
