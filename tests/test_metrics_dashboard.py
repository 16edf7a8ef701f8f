"""The Grafana dashboard and the docs name the metrics multipool really exports.

``deploy/grafana/multipool.json``: every PromQL query (panels and the alias
variable) names only metrics that a real ``prometheus_client`` registry shows
after traffic through a real server; so do the alert rules of
``docs/metrics.md``. The page's tables list every metric with its Prometheus
name and unit, and every log event with exactly its fields.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import RequestFactory
from prometheus_client.parser import text_string_to_metric_families

from multipool.metrics.events import EVENTS
from multipool.metrics.names import COUNTED, OBSERVED, TIMED
from multipool.views import metrics
from tests.docs_blocks import blocks
from tests.test_pool_lifecycle import request_cycle

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "multipool.json"
PAGE = ROOT / "docs" / "metrics.md"

#: PromQL words that are neither metrics nor functions
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset"}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """The metric names of a PromQL expression (or of Grafana's ``label_values(m, l)``)."""
    variable = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if variable:
        return {variable[1]}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = set()
    for match in re.finditer(r"(?<![\w$.])[a-zA-Z_:][\w:]*", text):
        if text[match.end():].lstrip().startswith("(") or match[0] in _KEYWORDS:
            continue  # a function, an operator
        found.add(match[0])
    return found


def test_promql_metrics_reads_what_queries_name() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (pool_name, le) '
        '(rate(db_client_connection_use_time_seconds_bucket{pool_name=~"$pool_name"}'
        "[$__rate_interval]))) / on (pool_name) group_left sum by (pool_name) (up)"
    )
    assert promql_metrics(expr) == {"db_client_connection_use_time_seconds_bucket", "up"}
    assert promql_metrics("label_values(db_client_connection_max, pool_name)") == {
        "db_client_connection_max"
    }


@pytest.fixture
def exported(make_alias: Any) -> set[str]:
    """The sample names a scrape shows after requests through a real server's alias."""
    conn = make_alias()
    metrics(RequestFactory().get("/metrics"))  # one process: recording from a first scrape on
    for _ in range(3):
        request_cycle(conn)
    text = metrics(RequestFactory().get("/metrics")).content.decode()
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("pool_name") == conn.alias
    }


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"${variable['name']}", variable["query"]["query"]))
    return queries


def _alert_rules() -> list[tuple[str, str]]:
    [block] = [b for b in blocks([PAGE]) if b.info == "yaml"]
    rules = yaml.safe_load(block.text)["groups"][0]["rules"]
    return [(rule["alert"], rule["expr"]) for rule in rules]


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_dashboard_and_alerts_query_exported_metrics(exported: set[str]) -> None:
    queries = _dashboard_queries() + _alert_rules()
    assert len(queries) >= 10
    for where, expr in queries:
        named = promql_metrics(expr)
        assert named, f"{where}: no metric in {expr!r}"
        assert named <= exported, f"{where}: not exported: {named - exported}"
    # every family multipool exports has a panel
    used = {name for _, expr in queries for name in promql_metrics(expr)}
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    assert families - shown <= {"db_client_connection_idle_max", "db_client_connection_idle_min"}


def test_dashboard_panels_are_distinct_and_use_the_data_source_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert '{pool_name=~"$pool_name"}' in target["expr"], panel["title"]


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` (cells without backticks)."""
    lines = PAGE.read_text().split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    return rows[2:]  # after the header and its rule


def test_docs_list_every_metric() -> None:
    rows = {row[0]: row for row in _table("## The metrics")}
    expected = {
        **{m.name: (m.prometheus, "observed", m.unit) for m in OBSERVED},
        **{m.name: (f"{m.prometheus}_total", "counted", m.unit) for m in COUNTED},
        **{m.name: (m.prometheus, "timed", m.unit) for m in TIMED},
    }
    assert set(rows) == set(expected)
    for name, (prometheus, kind, unit) in expected.items():
        assert rows[name][1:4] == [prometheus, kind, unit], name


def test_docs_list_every_event_with_its_fields() -> None:
    rows = {row[0]: row for row in _table("## Events in the log")}
    assert set(rows) == set(EVENTS)
    for event, (logger, level, fields) in EVENTS.items():
        shown = [f.strip() for f in rows[event][3].split(",") if f.strip()]
        assert rows[event][1:3] == [logger, level], event
        assert shown == list(fields), event
