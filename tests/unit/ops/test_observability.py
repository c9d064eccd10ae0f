"""The Grafana dashboard and the Prometheus rules under k8s/observability/.

``promtool check rules`` and ``promtool test rules`` (promtool is a pinned Go tool that
``make setup`` builds: missing is a failure, never a skip) check the rules and their unit tests,
and every metric a dashboard panel or a rule names must be one the services export: the
prometheus_client metrics of every module under services/ that defines some, read from the
registry after importing them, plus the few series that Prometheus and kube-state-metrics
provide (``EXTERNAL_METRICS``) and the series the rules record themselves.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from eventpipe.stack import install
from prometheus_client import REGISTRY

from tests.helpers.k8s import REPO_ROOT

OBSERVABILITY = REPO_ROOT / "k8s" / "observability"
RULES = OBSERVABILITY / "alerts.yaml"
RULE_TESTS = OBSERVABILITY / "alerts_test.yaml"
DASHBOARDS = sorted((OBSERVABILITY / "dashboards").glob("*.json"))
SERVICES_DIR = REPO_ROOT / "services"

# Series a rule may read that no EventPipe process exports, and who does export them.
# Readiness follows grpc.health.v1, so a Deployment's available replicas are its SERVING pods.
EXTERNAL_METRICS = {
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_deployment_status_replicas_unavailable": "kube-state-metrics",
}

# The alerts issue 17 asks for, by what they watch.
REQUIRED_ALERTS = {
    "EventPipeStoreConsumerLagGrowing",
    "EventPipeEnrichStreamingLagGrowing",
    "EventPipeDeadLetters",
    "EventPipeServiceNotServing",
    "EventPipeHighErrorRatio",
    "EventPipeFreshnessAboveObjective",
}

_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def metric_modules() -> list[str]:
    """Every hand-written module under services/ that uses prometheus_client, as a module name."""
    names = []
    for path in sorted(SERVICES_DIR.rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        if "prometheus_client" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(SERVICES_DIR).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def exported_metric_names() -> set[str]:
    """The sample names of every metric the services define, from the registry."""
    for module in metric_modules():
        importlib.import_module(module)
    # Every metric family comes out of collect(), a labelled one without samples too.
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",))
    }


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    text = text.replace("$__rate_interval", " ").replace("$__interval", " ")
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        before = text[: match.start()]
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function, an aggregation or a keyword
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # a unit or exponent of a number (5m, 1e3)
        names.add(word)
    return names


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]  # type: ignore[no-any-return]


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def dashboard_expressions(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        binary = install.tool_path("promtool")
    except install.InstallError as exc:
        pytest.fail(f"promtool is missing ({exc}); `make setup` builds it", pytrace=False)
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_metric_name_reader_finds_metrics_and_skips_functions_labels_and_numbers():
    expr = (
        'sum by (topic, le) (rate(eventpipe_a_total{reason=~"x|y", code!="OK"}[5m] offset 1h))'
        " / on (topic) group_left ignoring (pod) eventpipe:recorded:ratio5m > 1e3"
        " and histogram_quantile(0.99, sum without (pod) (rate(b_bucket[$__rate_interval])))"
        " or vector(0) unless up"
    )
    assert promql_metric_names(expr) == {"eventpipe_a_total", "eventpipe:recorded:ratio5m",
                                         "b_bucket", "up"}  # fmt: skip


def test_the_registry_lists_the_sample_names_of_every_kind_of_metric():
    exported = exported_metric_names()
    # A counter, a labelled histogram and a gauge, each from a different service.
    for name in (
        "eventpipe_rpc_requests_total",
        "eventpipe_rpc_latency_seconds_bucket",
        "eventpipe_query_cache_entries",
        "eventpipe_store_rows_written_total",
    ):
        assert name in exported
    assert "eventpipe_rpc_requests" not in exported


def test_promtool_finds_the_rule_file_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_their_unit_test_data_and_stay_quiet_otherwise():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_the_rules_hold_every_alert_the_operators_asked_for_each_with_a_severity_and_runbook():
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert alerts.keys() >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}", name


def test_every_alert_has_a_unit_test_that_expects_it_to_fire():
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for group in tested
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - firing == set()


def test_every_metric_a_rule_or_dashboard_names_is_one_the_services_export():
    exported = exported_metric_names() | EXTERNAL_METRICS.keys()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    unknown = {}
    sources = {"alerts.yaml": [rule["expr"] for rule in rules()]} | {
        path.name: dashboard_expressions(path) for path in DASHBOARDS
    }
    for source, expressions in sources.items():
        for expr in expressions:
            for name in promql_metric_names(expr) - exported - recorded:
                unknown.setdefault(name, source)
    assert unknown == {}, "metrics that no service exports: " + ", ".join(
        f"{name} (in {source})" for name, source in sorted(unknown.items())
    )


def test_the_dashboard_covers_every_part_of_the_pipeline_with_queries_on_a_chosen_datasource():
    assert DASHBOARDS, "no dashboard under k8s/observability/dashboards"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = dashboard["panels"]
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        rows = {panel["title"] for panel in panels if panel["type"] == "row"}
        assert {"Ingest", "Store", "Query", "Enrichment"} <= rows
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        names = set().union(*(promql_metric_names(e) for e in dashboard_expressions(path)))
        for watched in (
            "eventpipe_ingest_events_total",
            "eventpipe_store_consumer_lag",
            "eventpipe_store_dead_lettered_total",
            "eventpipe_store_freshness_seconds_bucket",
            "eventpipe_query_cache_hits_total",
            "eventpipe_enrich_job_duration_seconds_bucket",
            "eventpipe_enrich_jobs",
        ):
            assert watched in names, f"{path.name} does not show {watched}"


def test_every_alert_has_a_runbook_section_saying_what_it_means_and_what_to_do():
    runbook = (REPO_ROOT / "docs" / "operations.md").read_text()
    sections = dict(re.findall(r"^### (\w+)\n(.*?)(?=^#)", runbook + "\n#", re.M | re.S))
    for rule in rules():
        if "alert" in rule:
            section = sections.get(rule["alert"], "")
            assert "**Meaning.**" in section and "**Do.**" in section, rule["alert"]
