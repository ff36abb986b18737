#!/usr/bin/env python3
"""Checks a Grafana dashboard of qtrain (deploy/grafana/qtrain.json).

1. It loads into the Grafana Foundation SDK's Dashboard model (Grafana 11 schema) and its
   to_json() output has exactly the keys of the file, recursively: a misspelled or unknown key
   is lost in the round trip, a key the schema always writes is added; both are reported by
   path.
2. Its own rules: every panel (rows' nested panels too) has a unique id and a title; every
   panel but a row queries the datasource variable `datasource` (type prometheus) with at
   least one target with an expression; the variables `datasource`, `job_id` and `stage`
   exist; every selector of a worker metric filters job_id=~"$job_id" and stage=~"$stage";
   every range of rate()/increase() is $__rate_interval; with --promtool, every expression
   (variables substituted) parses.

Usage: check_dashboard.py DASHBOARD.json [--promtool PATH] [--expect-error TEXT]
With --expect-error the check must fail with an error containing TEXT (exit 0 then): the
failing fixtures use it, so that the checker is seen to catch what it claims to.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from grafana_foundation_sdk.cog import encoder, plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

DATASOURCE_UIDS = ("${datasource}", "$datasource")

# CONTRACT: the worker metrics, all labelled job_id and stage, and rank (qtrain_worker_up aside;
# qtrain_eval_metric is labelled task and metric instead of rank: only rank 0 evaluates).
WORKER_METRICS = (
    "qtrain_train_loss", "qtrain_eval_loss", "qtrain_learning_rate", "qtrain_grad_norm",
    "qtrain_tokens_total", "qtrain_tokens_per_second", "qtrain_step_seconds",
    "qtrain_compute_seconds_total", "qtrain_comm_seconds_total",
    "qtrain_data_wait_seconds_total", "qtrain_checkpoint_seconds",
    "qtrain_skipped_steps_total", "qtrain_step", "qtrain_stage",
    "qtrain_model_flops_utilization", "qtrain_memory_bytes", "qtrain_eval_metric",
)
WORKER_SELECTOR = re.compile(
    r"\b(" + "|".join(WORKER_METRICS) + r")(_bucket|_sum|_count)?\b(\s*\{([^}]*)\})?")
RANGE = re.compile(r"\[([^\]]*)\]")


def key_differences(original, round_tripped, path=""):
    """The paths of the keys only one of the two JSON values has."""
    errors = []
    if isinstance(original, dict) and isinstance(round_tripped, dict):
        for key in original:
            where = f"{path}/{key}"
            if key not in round_tripped:
                errors.append(f"{where}: lost in the round trip (not in the Grafana schema)")
            else:
                errors += key_differences(original[key], round_tripped[key], where)
        for key in round_tripped:
            if key not in original:
                errors.append(f"{path}/{key}: added by the round trip (missing from the file)")
    elif isinstance(original, list) and isinstance(round_tripped, list):
        if len(original) != len(round_tripped):
            errors.append(f"{path}: {len(original)} items, {len(round_tripped)} after the round trip")
        for i, (a, b) in enumerate(zip(original, round_tripped)):
            errors += key_differences(a, b, f"{path}[{i}]")
    elif isinstance(original, (dict, list)) != isinstance(round_tripped, (dict, list)):
        errors.append(f"{path}: {type(original).__name__} became {type(round_tripped).__name__}")
    return errors


def round_trip_errors(data):
    plugins.register_default_plugins()
    try:
        model = Dashboard.from_json(data)
        output = json.loads(json.dumps(model, cls=encoder.JSONEncoder))
    except Exception as error:  # the SDK raises whatever a malformed value provokes
        return [f"/: does not load as a Grafana dashboard: {type(error).__name__}: {error}"]
    return key_differences(data, output)


def all_panels(panels, path="/panels"):
    """(path, panel) of every panel, rows' nested panels included."""
    for i, panel in enumerate(panels or []):
        where = f"{path}[{i}]"
        yield where, panel
        if isinstance(panel, dict) and panel.get("type") == "row":
            yield from all_panels(panel.get("panels"), f"{where}/panels")


def uses_datasource_variable(ref):
    return (isinstance(ref, dict) and ref.get("type") == "prometheus"
            and ref.get("uid") in DATASOURCE_UIDS)


def expression_errors(where, expr):
    errors = []
    for match in WORKER_SELECTOR.finditer(expr):
        matchers = match.group(4) or ""
        for label in ("job_id", "stage"):
            if not re.search(label + r'\s*=~\s*"\$(\{' + label + r'\}|' + label + r')"', matchers):
                errors.append(f'{where}: {match.group(1)}{match.group(2) or ""} does not filter '
                              f'{label}=~"${label}"')
    for match in RANGE.finditer(expr):
        if match.group(1) != "$__rate_interval":
            errors.append(f"{where}: range [{match.group(1)}] is not [$__rate_interval]")
    return errors


def sanity_errors(data):
    errors = []
    if data.get("schemaVersion") != 39:
        errors.append(f"/schemaVersion: {data.get('schemaVersion')!r}, not 39")
    variables = {v.get("name"): v for v in (data.get("templating") or {}).get("list") or []
                 if isinstance(v, dict)}
    source = variables.get("datasource")
    if not source or source.get("type") != "datasource" or source.get("query") != "prometheus":
        errors.append("/templating: no datasource variable `datasource` of type prometheus")
    for name in ("job_id", "stage"):
        variable = variables.get(name)
        if not variable or variable.get("type") != "query":
            errors.append(f"/templating: no query variable `{name}`")
        elif not uses_datasource_variable(variable.get("datasource")):
            errors.append(f"/templating: variable `{name}` does not query ${{datasource}}")
    ids = {}
    for where, panel in all_panels(data.get("panels")):
        if not isinstance(panel, dict):
            errors.append(f"{where}: not an object")
            continue
        if "id" not in panel:
            errors.append(f"{where}: no id")
        elif panel["id"] in ids:
            errors.append(f"{where}: id {panel['id']} is also the id of {ids[panel['id']]}")
        else:
            ids[panel["id"]] = where
        if not panel.get("title"):
            errors.append(f"{where}: no title")
        if panel.get("type") == "row":
            continue
        if not uses_datasource_variable(panel.get("datasource")):
            errors.append(f"{where} ({panel.get('title')}): its datasource is not ${{datasource}}")
        targets = panel.get("targets") or []
        if not any(isinstance(t, dict) and str(t.get("expr", "")).strip() for t in targets):
            errors.append(f"{where} ({panel.get('title')}): no target with an expression")
        for j, target in enumerate(targets):
            target_where = f"{where}/targets[{j}]"
            if "datasource" in target and not uses_datasource_variable(target["datasource"]):
                errors.append(f"{target_where}: its datasource is not ${{datasource}}")
            errors += expression_errors(target_where, str(target.get("expr", "")))
    return errors


def substitute(expr):
    """The expression as Grafana sends it, with every variable set to match anything."""
    for name in ("job_id", "stage"):
        expr = expr.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    for name, value in (("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "1h")):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def promql_errors(data, promtool):
    """Runs every expression through `promtool check rules` as a recording rule."""
    rules, wheres = [], []
    for where, panel in all_panels(data.get("panels")):
        for j, target in enumerate((panel.get("targets") or []) if isinstance(panel, dict) else []):
            if isinstance(target, dict) and str(target.get("expr", "")).strip():
                rules.append({"record": f"dashboard:expr_{len(rules)}",
                              "expr": substitute(target["expr"])})
                wheres.append(f"{where}/targets[{j}]")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard_rules.yml")
        with open(path, "w") as f:  # JSON is YAML
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True,
                                text=True, timeout=60)
    if result.returncode == 0:
        return []
    text = result.stdout + result.stderr
    errors = []
    # promtool names a rule by its index in the group ("group "dashboard", rule N").
    for match in re.finditer(r'rule (\d+), "dashboard:expr_\d+": ([^\n]*)', text):
        index = int(match.group(1)) - 1
        errors.append(f"{wheres[index] if 0 <= index < len(wheres) else '?'}: {match.group(2)}")
    return errors or [f"promtool check rules failed: {text.strip()}"]


def check(path, promtool):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        return [f"{path}: cannot be read as JSON: {error}"]
    if not isinstance(data, dict):
        return [f"{path}: not a JSON object"]
    errors = round_trip_errors(data) + sanity_errors(data)
    if promtool:
        errors += promql_errors(data, promtool)
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dashboard")
    parser.add_argument("--promtool", help="promtool, to parse every expression")
    parser.add_argument("--expect-error", help="the check must fail with this in an error")
    args = parser.parse_args()
    if args.promtool and not os.access(args.promtool, os.X_OK):
        print(f"promtool {args.promtool!r} is not an executable", file=sys.stderr)
        return 2
    errors = check(args.dashboard, args.promtool)
    for error in errors:
        print(error)
    if args.expect_error is not None:
        if any(args.expect_error in e for e in errors):
            print(f"OK: {args.dashboard} is refused with {args.expect_error!r}")
            return 0
        print(f"FAIL: expected an error containing {args.expect_error!r}", file=sys.stderr)
        return 1
    if errors:
        print(f"FAIL: {len(errors)} problem(s) in {args.dashboard}", file=sys.stderr)
        return 1
    print(f"OK: {args.dashboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
