"""The Grafana dashboard only charts metrics Sitefleet actually exports."""

from __future__ import annotations

import json
import re

from shared.settings import PROJECT_ROOT

SUFFIXES = ("_bucket", "_total", "_count", "_sum")


def test_every_sitefleet_metric_on_the_dashboard_is_exported() -> None:
    dashboard = json.loads((PROJECT_ROOT / "infra" / "grafana" / "sitefleet.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bsitefleet_[a-z_]+", e)}
    source = "\n".join(p.read_text() for p in (PROJECT_ROOT / "services").rglob("*.py"))
    declared = set(re.findall(r'"(sitefleet_[a-z_]+)"', source))
    for metric in sorted(used):
        base = next((metric[: -len(s)] for s in SUFFIXES if metric.endswith(s)), metric)
        assert metric in declared or base in declared, f"{metric} is not exported"
    assert len(used) >= 10
