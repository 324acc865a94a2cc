"""docker-compose.yml and its config files, checked without a Docker engine.

- the file validates against the Compose Specification's JSON schema (vendored:
  deploy/compose-spec.schema.json, see deploy/README.md for its source and version);
- every file it and the Dockerfile reference exists (and is not left out by .dockerignore);
- every `prodguard` (and `mlflow server`) command line parses with the real CLI's options;
- every PRODGUARD_* variable is a real setting or a ${VAR} of the production config files, and
  the production settings, registry and Feast configs load with the containers' environment;
- Prometheus' rules and Grafana's dashboard parse and name only metrics prodguard (or BentoML,
  or Prometheus itself) really exports.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
SCHEMA = DEPLOY / "compose-spec.schema.json"
# npm package dclint 3.1.0, file schemas/compose.schema.json: the Compose Specification's
# compose-spec.json as that release bundles it (see deploy/README.md)
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"
PRODUCTION_FILES = [
    ROOT / "prodguard.yaml",
    ROOT / "mlruns_config" / "production.yaml",
    ROOT / "feature_repo" / "feature_store.production.yaml",
]
# Series Prometheus makes itself
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}


# ---- helpers ---------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _test_env() -> dict[str, str]:
    """.env.example with a stand-in for every secret it leaves empty (URL-safe, as documented);
    the optional settings stay empty (unset)."""
    return {
        k: v or (f"test-{k.lower().replace('_', '-')}" if _secret(k) else "")
        for k, v in _env_example().items()
    }


def _secret(key: str) -> bool:
    return any(word in key for word in ("PASSWORD", "SECRET", "TOKEN"))


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def _interpolate(node: Any, env: dict[str, str], used: set[str] | None = None) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, used) for v in node]
    if not isinstance(node, str):
        return node

    def fill(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        if used is not None:
            used.add(name)
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        empty_counts = op is not None and op.startswith(":")
        unset = value is None or (empty_counts and value == "")
        if op in (":-", "-"):
            return arg if unset else value
        if op in (":?", "?"):
            if unset:
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset else arg
        return value or ""

    return _INTERPOLATION.sub(fill, node)


def _compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _compose() -> dict[str, Any]:
    return _interpolate(_compose_raw(), _test_env())


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _prodguard_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {name: s for name, s in services.items() if _command(s)[:1] == ["prodguard"]}


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _dockerignored(path: str) -> bool:
    """Docker's rule: the last matching .dockerignore pattern decides ('!' re-includes)."""
    ignored = False
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


# ---- the schema ------------------------------------------------------------------------------


def test_vendored_schema_is_the_documented_one() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert SCHEMA_SHA256 in (DEPLOY / "README.md").read_text(encoding="utf-8")


def test_compose_file_validates_against_the_compose_specification() -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    for document in (_compose_raw(), _compose()):  # as written and as interpolated
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would() -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = _compose_raw()
    broken["services"]["guard"]["comand"] = ["prodguard", "guard"]  # a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


# ---- variables and secrets -------------------------------------------------------------------


def test_every_variable_is_documented_and_no_secret_is_written() -> None:
    used: set[str] = set()
    _interpolate(_compose_raw(), _test_env(), used)
    documented = _env_example()
    assert used == set(documented), "docker-compose.yml and .env.example name other variables"
    for key, value in documented.items():
        if _secret(key):
            assert value == "", f".env.example must leave {key} empty"
    text = COMPOSE.read_text(encoding="utf-8")
    assert not re.search(r"://[^/@\s:$]+:[^/@\s$]+@", text), "a password written into a URL"
    for match in re.finditer(r"^\s*([A-Z_]*(?:PASSWORD|SECRET|TOKEN)[A-Z_]*):\s*(\S+)", text, re.M):
        assert match.group(2).startswith("${"), f"{match.group(0)}: take it from .env"


def test_required_secrets_refuse_to_start_without_them() -> None:
    env = _test_env()
    del env["PRODGUARD_DB_PASSWORD"]
    with pytest.raises(AssertionError, match="PRODGUARD_DB_PASSWORD"):
        _interpolate(_compose_raw(), env)


# ---- files -----------------------------------------------------------------------------------


def test_build_contexts_dockerfiles_and_targets_exist() -> None:
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", _dockerfile(), re.M | re.I))
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build is None:
            assert "image" in service, name
            continue
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context}"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        if "target" in build:
            assert build["target"] in stages, f"{name}: no stage {build['target']}"


def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context() -> None:
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", _dockerfile(), re.M)
    assert copies
    for line in copies:
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not _dockerignored(source.rstrip("/")), f"COPY {source}: .dockerignore drops it"
    # the scripts a container runs from the image
    assert "COPY deploy/mlflow/create_user.py /app/deploy/mlflow/create_user.py" in _dockerfile()
    assert (
        _command(_compose()["services"]["mlflow-users"])[-1] == "/app/deploy/mlflow/create_user.py"
    )


def test_every_mounted_file_exists() -> None:
    compose = _compose()
    named = set(compose.get("volumes", {}))
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                mounts += 1
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    assert mounts >= 6


# ---- commands --------------------------------------------------------------------------------


def _leaf(group: Any, args: list[str]) -> tuple[Any, list[str], list[str]]:
    """The (sub)command the arguments name, the names leading to it, and its own arguments.
    (Click's or Typer's own copy of it: both have the same shape.)"""
    command = group
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "list_commands"):  # a group
        assert rest and not rest[0].startswith("-"), f"{' '.join(args)}: which subcommand?"
        name = rest.pop(0)
        sub = command.get_command(command.context_class(command), name)
        assert sub is not None, f"no command {' '.join([*path, name])}"
        command, path = sub, [*path, name]
    return command, path, rest


def _parse(group: Any, args: list[str]) -> list[str]:
    """Unknown options of the command line (none: it is then parsed, types checked)."""
    command, path, rest = _leaf(group, args)
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    unknown = [a.split("=")[0] for a in rest if a.startswith("--") and a.split("=")[0] not in known]
    if not unknown:
        command.make_context(" ".join(path), list(rest))  # raises on a bad value or argument
    return unknown


@pytest.mark.parametrize(
    "service", ["prodguard-a", "prodguard-b", "monitor", "guard", "prodguard-cli"]
)
def test_prodguard_commands_and_options_exist(service: str) -> None:
    import typer

    from prodguard.cli import cli

    args = _command(_prodguard_services()[service])
    unknown = _parse(typer.main.get_command(cli), args[1:])
    command = args[1]
    assert not unknown, f"prodguard {command} has no option(s) {unknown}"


def test_every_loop_and_replica_of_the_stack_runs() -> None:
    commands = {name: _command(s)[1] for name, s in _prodguard_services().items()}
    assert sorted(c for c in commands.values() if c == "serve") == ["serve", "serve"]
    assert {"monitor", "guard"} <= set(commands.values())
    ports = {
        _command(s)[_command(s).index("--port") + 1]
        for n, s in _prodguard_services().items()
        if commands[n] == "serve"
    }
    assert len(ports) == 2, "each replica needs its own port (its own BentoML home)"
    for name, service in _prodguard_services().items():
        if commands[name] in ("monitor", "guard"):
            assert "--every" in _command(service), f"{name} must loop (--every)"


def test_mlflow_server_command_uses_real_options() -> None:
    from mlflow.cli import cli as mlflow_cli

    service = _compose()["services"]["mlflow"]
    args = _command(service)
    assert args[:2] == ["mlflow", "server"]
    assert _parse(mlflow_cli, args[1:]) == []
    assert args[args.index("--app-name") + 1] == "basic-auth"
    env = _environment(service)
    assert {
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "PGPASSWORD",
    } <= set(env)
    # the auth config mounted where MLFLOW_AUTH_CONFIG_PATH points, with the keys mlflow reads
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    ini = mounts.get("./deploy/mlflow/basic_auth.ini")
    assert ini == env["MLFLOW_AUTH_CONFIG_PATH"]
    import configparser

    parser = configparser.ConfigParser()
    parser.read(ROOT / "deploy" / "mlflow" / "basic_auth.ini")
    section = parser["mlflow"]
    assert section["default_permission"] in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
    assert section["database_uri"].startswith("postgresql+psycopg://mlflow@postgres:5432/")
    assert "admin_password" not in section, "the admin password comes from the environment"


# ---- environment -----------------------------------------------------------------------------


def _template_variables() -> dict[str, bool]:
    """${VARS} of the production config files -> whether every use has a default."""
    found: dict[str, bool] = {}
    for path in PRODUCTION_FILES:
        if path.is_file():
            text = "\n".join(
                line.split("#")[0] if path.suffix in (".yaml", ".yml") else line
                for line in path.read_text(encoding="utf-8").splitlines()
            )
            for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}", text):
                found[name] = found.get(name, True) and bool(default)
    found.pop("PRODGUARD_DATA_DIR", None)  # prodguard fills it with paths.data_dir
    return found


def _setting_exists(key: str) -> bool:
    from pydantic import BaseModel

    from prodguard.config import Settings

    model: Any = Settings
    for part in key.removeprefix("PRODGUARD_").lower().split("__"):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation
        args = getattr(model, "__args__", ())
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), model)
    return True


def test_prodguard_variables_are_settings_or_template_variables() -> None:
    templates = _template_variables()
    for name, service in _prodguard_services().items():
        for key in _environment(service):
            if not key.startswith("PRODGUARD_") or key in ("PRODGUARD_ENV", "PRODGUARD_CONFIG"):
                continue
            if "__" in key:
                assert _setting_exists(key), f"{name}: {key} is no setting of prodguard.yaml"
            elif key not in templates:
                missing = [str(p.relative_to(ROOT)) for p in PRODUCTION_FILES if not p.is_file()]
                if missing:  # it may be one of theirs
                    pytest.skip(f"{key}: {', '.join(missing)} not written yet")
                raise AssertionError(f"{name}: {key} is used by no production config file")


def test_production_config_variables_without_default_are_all_set() -> None:
    required = {name for name, has_default in _template_variables().items() if not has_default}
    if not required:
        pytest.skip("no production config file with ${VARS} yet")
    for name, service in _prodguard_services().items():
        missing = required - set(_environment(service))
        assert not missing, f"{name} does not set {sorted(missing)}"


def test_production_settings_load_with_the_containers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prodguard.config import load_settings

    raw = yaml.safe_load((ROOT / "prodguard.yaml").read_text(encoding="utf-8"))
    if "production" not in (raw.get("environments") or {}):
        pytest.skip("prodguard.yaml has no environments.production yet")
    for name, service in _prodguard_services().items():
        env = _environment(service)
        assert env["PRODGUARD_ENV"] == "production"
        assert env["PRODGUARD_CONFIG"] == "/app/prodguard.yaml"
        for key, value in env.items():
            monkeypatch.setenv(key, value)  # what the tool configs' templates read too
        settings = load_settings(ROOT / "prodguard.yaml", environ=env)
        assert str(settings.paths.data_dir) == "/srv/prodguard", name
        assert settings.rollout.require_drill is True
        assert settings.alerts.webhook_url is None  # the documented default: unset
        if (ROOT / "mlruns_config" / "production.yaml").is_file():
            from prodguard.registry.config import load_registry_config

            registry = load_registry_config(settings)
            assert registry.tracking_uri == "http://mlflow:5000"
            assert registry.audit_uri.startswith("postgresql+psycopg://prodguard:")
        if (ROOT / "feature_repo" / "feature_store.production.yaml").is_file():
            from prodguard.features.feast_adapter import render_store_config

            store = render_store_config(settings)
            assert store["registry"]["path"].startswith("postgresql+psycopg://prodguard:")
            assert "redis:6379" in store["online_store"]["connection_string"]


# ---- Prometheus and Grafana ------------------------------------------------------------------


def _exported_metrics() -> dict[str, set[str]]:
    """Metric family -> the series names it exposes, from prodguard's source (prometheus_client
    and bentoml.metrics) plus BentoML's HTTP metrics (checked against its source).
    tests/e2e/test_prometheus_scrape.py checks the queries against real /metrics pages."""
    families: dict[str, set[str]] = {}
    pattern = re.compile(
        r"\b(Counter|Gauge|Histogram|Summary)\(\s*(?:name\s*=\s*)?[\"']([A-Za-z_:][A-Za-z0-9_:]*)[\"']"
    )
    for path in (ROOT / "src" / "prodguard").rglob("*.py"):
        for kind, name in pattern.findall(path.read_text(encoding="utf-8")):
            families[name] = _series(kind, name)
    import bentoml

    server = Path(bentoml.__file__).parent / "_internal" / "server" / "http" / "instruments.py"
    defaults = Path(bentoml.__file__).parent / "_internal" / "configuration" / "v2"
    source = server.read_text(encoding="utf-8")
    assert "namespace: bentoml_service" in (defaults / "default_configuration.yaml").read_text()
    for kind, name in (
        ("Counter", "request_total"),
        ("Histogram", "request_duration_seconds"),
        ("Gauge", "request_in_progress"),
        ("Gauge", "last_request_timestamp_seconds"),
    ):
        assert f'name="{name}"' in source, f"BentoML no longer exports {name}"
        families[f"bentoml_service_{name}"] = _series(kind, f"bentoml_service_{name}")
    return families


def _series(kind: str, name: str) -> set[str]:
    if kind == "Counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind in ("Histogram", "Summary"):
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"}
    return {name}


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan", "atan2"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression (or Grafana's label_values(...)) selects."""
    expr = re.sub(r"label_values\(\s*(.*),\s*\w+\s*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr):
        if match.group(2) is None and match.group(1) not in _KEYWORDS:
            names.add(match.group(1))
    return names


def test_promql_metric_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, stage) (rate(prodguard_stage_seconds_bucket"
        '{stage="total", replica=~"$replica"}[$__rate_interval]))) > 0.25 and on (x) up == 1'
    )
    assert promql_metrics(expr) == {"prodguard_stage_seconds_bucket", "up"}
    assert promql_metrics('label_values(up{job="a"}, replica)') == {"up"}
    assert promql_metrics("time() - prodguard_monitor_last_run_timestamp_seconds") == {
        "prodguard_monitor_last_run_timestamp_seconds"
    }


def test_the_source_exports_the_metrics_this_test_knows() -> None:
    families = _exported_metrics()
    assert {
        "prodguard_stage_seconds",
        "prodguard_predictions_total",
        "prodguard_degradations_total",
        "prodguard_shadow_dropped_total",
        "prodguard_model_swaps_total",
        "prodguard_alerts",
        "prodguard_monitor_value",
        "prodguard_monitor_status",
        "prodguard_monitor_threshold",
        "prodguard_monitor_window_status",
        "prodguard_monitor_window_rows",
        "prodguard_monitor_last_run_timestamp_seconds",
    } <= set(families)
    assert "prodguard_alerts_total" in families["prodguard_alerts"]


def _known_series() -> set[str]:
    return set().union(*_exported_metrics().values()) | PROMETHEUS_SERIES


def _prometheus_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    rules = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["rules"]
        rules.extend(group["rules"])
    return rules


def test_alert_rules_are_well_formed() -> None:
    rules = _prometheus_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"(\d+[smhdwy])+", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_alert_rules_use_only_exported_metrics() -> None:
    known = _known_series()
    for rule in _prometheus_rules():
        unknown = promql_metrics(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: no such metric {sorted(unknown)}"
    used = set().union(*(promql_metrics(r["expr"]) for r in _prometheus_rules()))
    assert {
        "up",
        "prodguard_stage_seconds_bucket",
        "prodguard_predictions_total",
        "prodguard_monitor_status",
        "prodguard_monitor_last_run_timestamp_seconds",
        "prodguard_alerts_total",
        "bentoml_service_request_total",
    } <= used


def test_prometheus_scrapes_the_replicas_and_the_monitor_where_they_listen() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == "./deploy/prometheus/alerts.yml"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    targets = {
        job["job_name"]: [t for s in job["static_configs"] for t in s["targets"]]
        for job in config["scrape_configs"]
    }
    for job, option in (("prodguard-serve", "--port"), ("prodguard-monitor", "--metrics-port")):
        assert targets[job], job
        for target in targets[job]:
            host, port = target.split(":")
            command = _command(compose["services"][host])
            assert command[command.index(option) + 1] == port, target
            assert port in [str(p) for p in compose["services"][host]["expose"]], target


def _dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "prodguard.json").read_text("utf-8"))


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text("utf-8"))
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    providers = yaml.safe_load((provisioning / "dashboards" / "prodguard.yml").read_text("utf-8"))
    (provider,) = providers["providers"]
    grafana = _compose()["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard = _dashboard()
    assert dashboard["uid"] == "prodguard" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_dashboard_queries_only_exported_metrics_and_shows_every_prodguard_metric() -> None:
    known = _known_series()
    used: set[str] = set()
    for expr in _dashboard_exprs(_dashboard()):
        assert expr.count("(") == expr.count(")"), expr
        names = promql_metrics(expr)
        assert not names - known, f"{expr}: no such metric {sorted(names - known)}"
        used |= names
    for family, series in _exported_metrics().items():
        if family.startswith("prodguard_"):
            assert series & used, f"the dashboard does not show {family}"
    assert {"bentoml_service_request_total", "prodguard_stage_seconds_bucket"} <= used
