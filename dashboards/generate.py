#!/usr/bin/env python3
"""Writes dashboards/baton.json, the Grafana dashboard for baton.

Edit the panels here and run `python3 dashboards/generate.py`; the JSON is
committed so it can be imported without running anything.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
LSEL = 'instance=~"$instance", listener=~"$listener"'
RI = "$__rate_interval"

PANELS = [
    ("row", "Traffic"),
    ("Connections accepted /s by listener", "cps", [
        (f"sum by (listener) (rate(baton_connections_accepted_total{{{LSEL}}}[{RI}]))", "{{listener}}")]),
    ("Active connections by listener", "short", [
        (f"sum by (listener) (baton_connections_active{{{LSEL}}})", "{{listener}}"),
        (f"sum by (listener) (baton_listener_max_connections{{{LSEL}}})", "{{listener}} max")]),
    ("Bytes /s from clients (received) and to clients (sent)", "Bps", [
        (f"sum by (listener) (rate(baton_bytes_received_total{{{LSEL}}}[{RI}]))", "{{listener}} received"),
        (f"sum by (listener) (rate(baton_bytes_sent_total{{{LSEL}}}[{RI}]))", "{{listener}} sent")]),
    ("Rejected connections /s by reason", "cps", [
        (f"sum by (listener, reason) (rate(baton_connections_rejected_total{{{LSEL}}}[{RI}]))", "{{listener}} {{reason}}")]),
    ("row", "Backends"),
    ("Backend health (1 = takes traffic)", "short", [
        (f"baton_backend_healthy{{{SEL}}}", "{{cluster}} {{backend}}")]),
    ("Backend active connections", "short", [
        (f"sum by (cluster, backend) (baton_backend_connections_active{{{SEL}}})", "{{cluster}} {{backend}}")]),
    ("Backend connect errors /s by reason", "cps", [
        (f"sum by (cluster, backend, reason) (rate(baton_backend_connect_errors_total{{{SEL}}}[{RI}]))", "{{cluster}} {{backend}} {{reason}}")]),
    ("Backend connect latency p50 / p99", "s", [
        (f"histogram_quantile(0.5, sum by (le, cluster) (rate(baton_backend_connect_duration_seconds_bucket{{{SEL}}}[{RI}])))", "{{cluster}} p50"),
        (f"histogram_quantile(0.99, sum by (le, cluster) (rate(baton_backend_connect_duration_seconds_bucket{{{SEL}}}[{RI}])))", "{{cluster}} p99")]),
    ("row", "Reloads and upgrades"),
    ("Config reloads by result, and config generation", "short", [
        (f"sum by (result) (increase(baton_config_reloads_total{{{SEL}}}[{RI}]))", "reloads {{result}}"),
        (f"baton_config_generation{{{SEL}}}", "config generation {{instance}}")]),
    ("Binary upgrades by result, and process generation", "short", [
        (f"sum by (result) (increase(baton_upgrades_total{{{SEL}}}[{RI}]))", "upgrades {{result}}"),
        (f"baton_process_generation{{{SEL}}}", "process generation {{instance}}")]),
    ("Draining predecessors and their remaining connections", "short", [
        (f"baton_draining_processes{{{SEL}}}", "draining processes"),
        (f"baton_drain_connections_active{{{SEL}}}", "generation {{generation}} connections")]),
    ("Drain elapsed against drain.timeout", "s", [
        (f"baton_drain_elapsed_seconds{{{SEL}}}", "generation {{generation}} elapsed"),
        (f"max(baton_drain_timeout_seconds{{{SEL}}})", "drain.timeout")]),
    ("Streams cut by drain.timeout", "short", [
        (f"sum(increase(baton_drain_forced_closes_total{{{SEL}}}[{RI}]))", "forced closes")]),
    ("row", "TLS"),
    ("Days until certificate expiry", "d", [
        (f"(baton_tls_certificate_expiry_timestamp_seconds{{{SEL}}} - time()) / 86400", "{{listener}} {{cert}}")]),
]


def build():
    panels, y, x, pid = [], 0, 0, 1
    for item in PANELS:
        if item[0] == "row":
            if x:
                y, x = y + 8, 0
            panels.append({"type": "row", "title": item[1], "id": pid, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
        else:
            title, unit, targets = item
            panels.append({
                "type": "timeseries", "title": title, "id": pid, "datasource": DS,
                "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr,
                             "legendFormat": legend} for i, (expr, legend) in enumerate(targets)],
            })
            x += 12
            if x >= 24:
                y, x = y + 8, 0
        pid += 1
    return {
        "__inputs": [],
        "title": "baton",
        "uid": "baton-overview",
        "tags": ["baton", "proxy"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "editable": True,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "instance", "type": "query", "datasource": DS, "label": "Instance",
             "query": {"query": "label_values(baton_build_info, instance)", "refId": "instance"},
             "definition": "label_values(baton_build_info, instance)",
             "includeAll": True, "multi": True, "refresh": 2, "current": {}, "hide": 0},
            {"name": "listener", "type": "query", "datasource": DS, "label": "Listener",
             "query": {"query": "label_values(baton_connections_accepted_total{instance=~\"$instance\"}, listener)",
                       "refId": "listener"},
             "definition": "label_values(baton_connections_accepted_total{instance=~\"$instance\"}, listener)",
             "includeAll": True, "multi": True, "refresh": 2, "current": {}, "hide": 0},
        ]},
        "annotations": {"list": [
            {"name": "Upgrades", "datasource": DS, "enable": True, "iconColor": "orange",
             "expr": f"changes(baton_process_generation{{{SEL}}}[1m]) > 0", "titleFormat": "binary upgrade"},
            {"name": "Reloads", "datasource": DS, "enable": True, "iconColor": "blue",
             "expr": f"changes(baton_config_generation{{{SEL}}}[1m]) > 0", "titleFormat": "config reload"},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baton.json")
    with open(out, "w") as f:
        json.dump(build(), f, indent=2)
        f.write("\n")
