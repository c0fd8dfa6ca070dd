"""/metrics passes Prometheus's own linter, ``promtool check metrics`` (issue #13), and the
official Python parser reads every family; checked on an agent with the mesh on that has
run, failed and logged calls, so the labelled series exist.

promtool comes from Debian's ``prometheus`` package: ``.ci/run`` extracts just the binary
to build/tools/promtool (installing the package would also start a Prometheus server).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agents import ROOT, SAMPLES, AgentPool

PROMTOOL = shutil.which("promtool") or str(ROOT / "build" / "tools" / "promtool")
GRAFANA = ROOT / "docs" / "grafana-dashboard.json"


def test_metrics_pass_promtool(agent_factory: AgentPool, tmp_path: Path) -> None:
    assert Path(PROMTOOL).exists(), "no promtool: run .ci/run (or apt-get download " \
                                    "prometheus and extract usr/bin/promtool to build/tools)"
    a = agent_factory("-fast", "-mdns=false", mesh=True)
    assert a.upload("lint", SAMPLES / "double" / "double.wasm")[0] == 201
    assert a.upload("lint-err", SAMPLES / "misbehave" / "exit3.wasm")[0] == 201
    assert a.exec("lint", 1)[0] == 200
    assert a.exec("lint-err")[0] == 422
    assert a.get("/modules/lint/logs")[0] == 200
    assert a.get("/ui/state")[0] == 200
    text = a.metrics()
    run = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, f"promtool check metrics:\n{run.stdout}{run.stderr}"
    names = {f.name for f in text_string_to_metric_families(text)}
    check_grafana_dashboard(text, tmp_path)
    for name in ("nebula_edge_exec", "nebula_edge_exec_duration_seconds", "nebula_edge_peers",
                 "nebula_edge_call_log_entries", "nebula_edge_call_log_dropped",
                 "nebula_edge_streams", "nebula_edge_events"):
        assert name in names, sorted(names)


def check_grafana_dashboard(exposition: str, tmp_path: Path) -> None:
    """Every query of docs/grafana-dashboard.json parses as PromQL (``promtool check
    rules``, Grafana's variables filled in) and names only series the agent exports."""
    dash = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "grafana", "rules": [
        {"record": f"nebula_edge:panel{i}",
         "expr": e.replace("$__rate_interval", "1m").replace("$instance", ".*")}
        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(rules))
    run = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, f"promtool check rules:\n{run.stdout}{run.stderr}"
    exported = set(re.findall(r"^(nebula_edge_[a-z_]+)", exposition, re.M))
    exported |= set(re.findall(r"^# HELP (nebula_edge_[a-z_]+)", exposition, re.M))
    used = {n for e in exprs for n in re.findall(r"nebula_edge_[a-z_]+", e)}
    assert used <= exported, sorted(used - exported)
