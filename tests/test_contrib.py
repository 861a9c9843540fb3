"""The monitoring that ships in contrib/: the alert rules pass `promtool check rules` and
each one fires on the synthetic series it is written for, and on nothing in a healthy day
(`promtool test rules`); the Grafana dashboard imports with a datasource variable on every
panel and its queries are valid PromQL; every metric either of them uses is one a live
daemon exports; every alert links to its section of docs/runbooks.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import wasender_body, wasender_headers
from tests.test_daemon_process import get, post

ROOT = Path(__file__).parents[1]
RULES = ROOT / "contrib" / "prometheus" / "wahookd-alerts.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "wahookd.json"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus; .ci/run installs it)"
)

# Metric names in PromQL; `up` is Prometheus's own, not the daemon's.
METRIC_NAME = re.compile(r"\b(?:wahookd|process)_[a-z_]+\b")
HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, also those inside collapsed rows."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    queries = [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def as_promql(query: str) -> str:
    """A dashboard query as Prometheus sees it once Grafana has filled in its variables."""
    query = query.replace("$__rate_interval", "5m")
    query = re.sub(r"\$(job|instance|source|sink)\b", ".*", query)
    values = re.fullmatch(r"label_values\((.+), *\w+\)", query)
    return values.group(1) if values else query


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# -- the alert rules -----------------------------------------------------------------------


@needs_promtool
def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = {
        github_anchor(line[3:]) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")
    }
    assert len(alerts()) == len([rule for rule in rules() if "alert" in rule]), "alert names repeat"
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", name
        assert anchor in anchors, f"{name}: docs/runbooks.md has no section #{anchor}"


# Synthetic series for `promtool test rules`, one scenario per condition, scraped every
# minute. Each scenario says which alerts fire (with their labels) at which time, and which
# stay silent; `for:` is proven by an evaluation before it has elapsed.
NODE = {"job": "wahookd", "instance": "node1:8080"}


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    every = {**NODE, **labels}
    selector = ",".join(f'{key}="{value}"' for key, value in every.items())
    return {"series": f"{metric}{{{selector}}}", "values": values}


def fires(**labels: str) -> dict[str, Any]:
    return {**NODE, **labels}


SCENARIOS: dict[str, dict[str, Any]] = {
    "not ready": {
        "series": [series("wahookd_ready", "1 1 0x10")],
        "expect": [("3m", "WahookdNotReady", []), ("5m", "WahookdNotReady", [fires()])],
    },
    "target down": {
        "series": [series("up", "1 0x10")],
        "expect": [("2m", "WahookdTargetDown", []), ("4m", "WahookdTargetDown", [fires()])],
    },
    "no target at all": {
        "series": [{"series": 'up{job="node",instance="node1:9100"}', "values": "1x20"}],
        "expect": [
            ("5m", "WahookdTargetMissing", []),
            ("12m", "WahookdTargetMissing", [{"job": "wahookd"}]),
        ],
    },
    "internal errors": {
        "series": [
            series("wahookd_http_requests_total", "0+100x20", source="shop", code="200"),
            series("wahookd_http_requests_total", "0+5x20", source="shop", code="500"),
        ],
        "expect": [
            ("3m", "WahookdServerErrors", []),
            ("10m", "WahookdServerErrors", [fires(source="shop")]),
            ("10m", "WahookdUnavailable", []),
        ],
    },
    "503s": {
        "series": [
            series("wahookd_http_requests_total", "0+100x20", source="shop", code="200"),
            series("wahookd_http_requests_total", "0+20x20", source="shop", code="503"),
            series("wahookd_http_requests_total", "0+100x20", source="meta", code="200"),
        ],
        "expect": [
            ("10m", "WahookdUnavailable", [fires(source="shop")]),
            ("10m", "WahookdServerErrors", []),  # a 503 is not an internal error
        ],
    },
    "sink backlog growing": {
        "series": [
            series("wahookd_sink_backlog", "0+100x40", sink="crm"),
            series("wahookd_sink_backlog", "1000x40", sink="archive"),  # large but steady
        ],
        "expect": [
            ("10m", "WahookdSinkBacklogGrowing", []),
            ("20m", "WahookdSinkBacklogGrowing", [fires(sink="crm")]),
        ],
    },
    "oldest pending over its bound": {
        "series": [
            series("wahookd_sink_oldest_pending_seconds", "0+60x30", sink="crm"),
            series("wahookd_sink_oldest_pending_seconds", "0 3 1 0x27", sink="archive"),
        ],
        "expect": [
            ("16m", "WahookdSinkOldestPending", []),
            ("20m", "WahookdSinkOldestPending", [fires(sink="crm")]),
        ],
    },
    "sink paused": {
        "series": [series("wahookd_sink_paused", "0 0 1x10", sink="crm")],
        "expect": [
            ("6m", "WahookdSinkPaused", []),
            ("8m", "WahookdSinkPaused", [fires(sink="crm")]),
        ],
    },
    "dead letters rising": {
        "series": [
            series("wahookd_dead_letters", "0x30 1x30", sink="crm"),
            # a replay empties the store: falling, not rising
            series("wahookd_dead_letters", "5x30 4 3 2 1 0x26", sink="archive"),
        ],
        "expect": [("40m", "WahookdDeadLettersRising", [fires(sink="crm")])],
    },
    "source stale": {
        "series": [
            series("wahookd_source_stale", "0 0 1x5", source="shop"),
            series("wahookd_source_stale", "0x7", source="meta"),
        ],
        "expect": [("1m", "WahookdSourceStale", []), ("3m", "WahookdSourceStale", [fires(source="shop")])],
    },
    "session down": {
        "series": [
            series("wahookd_session_up", "1 1 0x10", source="shop"),
            series("wahookd_session_up", "1x12", source="evo"),
        ],
        "expect": [
            ("5m", "WahookdSessionDown", []),
            ("8m", "WahookdSessionDown", [fires(source="shop")]),
        ],
    },
    "media failures": {
        "series": [
            series("wahookd_media_downloads_total", "0+1x30", source="shop", outcome="failed"),
            series("wahookd_media_downloads_total", "0+1x30", source="shop", outcome="stored"),
            # retries are attempts, not failures
            series("wahookd_media_downloads_total", "0+10x30", source="evo", outcome="retry"),
            series("wahookd_media_downloads_total", "0+10x30", source="evo", outcome="stored"),
        ],
        "expect": [("20m", "WahookdMediaFailures", [fires(source="shop")])],
    },
    "reload failed": {
        "series": [
            series("wahookd_reloads_total", "0x5 1x25", outcome="error"),
            # the daemon creates the series at the first error: it appears already at 1
            series("wahookd_reloads_total", "_x5 1x25", outcome="error", instance="node2:8080"),
            series("wahookd_reloads_total", "0+1x30", outcome="ok", instance="node3:8080"),
        ],
        "expect": [
            (
                "10m",
                "WahookdReloadFailed",
                [fires(outcome="error"), fires(outcome="error", instance="node2:8080")],
            ),
            ("25m", "WahookdReloadFailed", []),  # the window has passed
        ],
    },
    "rate limit without redis": {
        "series": [
            series("wahookd_ratelimit_fallback_total", "0x2 0+50x20"),
            # a Redis restart of a minute or two: the alert waits its `for`
            series("wahookd_ratelimit_fallback_total", "0x2 0+50x2 100x18", instance="node2:8080"),
        ],
        "expect": [
            ("8m", "WahookdRateLimitFallback", []),
            ("15m", "WahookdRateLimitFallback", [fires()]),
        ],
    },
}


def healthy_day() -> dict[str, Any]:
    """Two hours of a healthy daemon: every metric the rules read, with good values."""
    return {
        "series": [
            series("up", "1x120"),
            series("wahookd_ready", "1x120"),
            series("wahookd_http_requests_total", "0+100x120", source="shop", code="200"),
            series("wahookd_http_requests_total", "0x120", source="shop", code="503"),
            series("wahookd_http_requests_total", "0x120", source="shop", code="500"),
            series("wahookd_sink_backlog", "3 0 12 0 1 0x115", sink="crm"),
            series("wahookd_sink_oldest_pending_seconds", "0 2 0x118", sink="crm"),
            series("wahookd_sink_paused", "0x120", sink="crm"),
            series("wahookd_dead_letters", "7x120", sink="crm"),  # old ones, none new
            series("wahookd_source_stale", "0x120", source="shop"),
            series("wahookd_session_up", "1x120", source="shop"),
            series("wahookd_media_downloads_total", "0+2x120", source="shop", outcome="stored"),
            series("wahookd_media_downloads_total", "0+1x120", source="shop", outcome="retry"),
            series("wahookd_media_downloads_total", "0x120", source="shop", outcome="failed"),
            series("wahookd_reloads_total", "0x60 1x59", outcome="ok"),
            series("wahookd_reloads_total", "0x120", outcome="error"),
            series("wahookd_ratelimit_fallback_total", "0x120"),
        ],
        "expect": [("100m", name, []) for name in alerts()],
    }


def unit_test_file(tmp_path: Path, scenario: dict[str, Any]) -> Path:
    """A promtool test file for `scenario`, against the shipped rules without their
    annotations: the firing logic (expr, for, labels) is what is under test; the prose is
    checked by promtool check rules and by the runbook test."""
    severity = {name: rule["labels"]["severity"] for name, rule in alerts().items()}
    stripped = yaml.safe_load(RULES.read_text())
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_copy = tmp_path / "rules.yml"
    rules_copy.write_text(json.dumps(stripped))  # JSON is YAML
    test = {
        "rule_files": [str(rules_copy)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": scenario["series"],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": name,
                        "exp_alerts": [
                            {"exp_labels": {**labels, "severity": severity[name]}} for labels in firing
                        ],
                    }
                    for at, name, firing in scenario["expect"]
                ],
            }
        ],
    }
    path = tmp_path / "wahookd-alerts.test.yml"
    path.write_text(json.dumps(test, indent=1))
    return path


@needs_promtool
@pytest.mark.parametrize("condition", list(SCENARIOS))
def test_each_alert_fires_on_its_condition(tmp_path: Path, condition: str) -> None:
    result = promtool("test", "rules", unit_test_file(tmp_path, SCENARIOS[condition]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_a_healthy_daemon_fires_no_alert(tmp_path: Path) -> None:
    result = promtool("test", "rules", unit_test_file(tmp_path, healthy_day()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_proven_to_fire_by_a_scenario() -> None:
    proven = {name for scenario in SCENARIOS.values() for _, name, firing in scenario["expect"] if firing}
    assert proven == set(alerts())


# -- the dashboard -------------------------------------------------------------------------


def test_the_dashboard_imports_with_a_datasource_variable_on_every_panel() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"]
    assert board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for name in ("source", "sink"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] is True
        assert variables[name]["query"]["query"].startswith("label_values(")
    uses_variable = {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == uses_variable, variable["name"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        assert panel["datasource"] == uses_variable, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == uses_variable, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_dashboard_shows_what_an_operator_asks_about() -> None:
    queries = "\n".join(dashboard_queries(dashboard()))
    for metric in (
        "wahookd_http_requests_total",
        "wahookd_request_duration_seconds_bucket",
        "wahookd_duplicates_total",
        "wahookd_rejected_total",
        "wahookd_rate_limited_total",
        "wahookd_journal_commit_seconds_bucket",
        "wahookd_sink_backlog",
        "wahookd_sink_oldest_pending_seconds",
        "wahookd_sink_deliveries_total",
        "wahookd_sink_delivery_seconds_bucket",
        "wahookd_dead_letters",
        "wahookd_sink_paused",
        "wahookd_media_downloads_total",
        "wahookd_media_bytes_total",
        "wahookd_session_up",
        "wahookd_source_stale",
        "wahookd_source_last_event_timestamp_seconds",
        "wahookd_ready",
        "wahookd_dedupe_entries",
        "wahookd_dedupe_capacity",
        "wahookd_reloads_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ):
        assert metric in queries, metric
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, " in queries


@needs_promtool
def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording rules' expressions: one rule per dashboard query.
    queries = dashboard_queries(dashboard())
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": as_promql(query)}
                    for n, query in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(recording))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- every metric used exists ------------------------------------------------------------

LIVE_CONFIG = """
[sources.shop]
provider = "wasender"
secret = "x"
stale_after = 60

[sinks.archive]
plugin = "file"
path = "archive.jsonl"
"""


def exported_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is used (the dashboard, the alert rules)."""
    used: dict[str, set[str]] = {}
    for query in dashboard_queries(dashboard()):
        for name in METRIC_NAME.findall(query):
            used.setdefault(name, set()).add("dashboard")
    for rule in rules():
        for name in METRIC_NAME.findall(rule["expr"]):
            used.setdefault(name, set()).add("alert rules")
    return used


def test_every_metric_the_dashboard_and_the_rules_use_is_exported(daemon_factory: Any) -> None:
    daemon = daemon_factory(LIVE_CONFIG).start()
    # Traffic first, so that the labelled series exist: a message, and a session event.
    session = json.dumps(
        {"event": "session.status", "timestamp": time.time(), "data": {"status": "connected"}}
    )
    for body in (wasender_body("CONTRIB1"), session.encode()):
        status, answer = post(daemon.port, "/webhooks/shop", body, wasender_headers("x"))
        assert status == 200, answer
    status, body = get(daemon.port, "/metrics")
    assert status == 200
    exported = exported_names(body.decode())

    used = used_names()
    assert len(used) > 20  # the extraction found the queries
    missing = {
        name: sorted(where)
        for name, where in sorted(used.items())
        if name not in exported and HISTOGRAM_SUFFIX.sub("", name) not in exported
    }
    assert missing == {}, f"used but not exported by the daemon: {missing}"
