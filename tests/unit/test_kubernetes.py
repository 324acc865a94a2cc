"""deploy/kubernetes (a kustomize base), checked offline without a cluster.

- every resource validates, strictly (unknown fields refused), against the Kubernetes API
  schemas shipped in the `kubernetes-validate` package, for the oldest and newest version we
  claim; the kustomization lists every manifest of the folder and only those;
- every prodguard command line parses with the real CLI's options;
- every PRODGUARD_* variable is a real setting or a ${VAR} of the production config files, and
  the production settings load with the ConfigMap's environment plus the Secret's keys;
- no credential sits in the ConfigMap or a manifest (secrets come from secrets.env only);
- probes and Prometheus annotations point at the ports the containers open.

Not checked here (no cluster, no kustomize binary): `kubectl apply -k`, scheduling, the volume's
ReadWriteMany class, the probes against a running pod (tests/e2e/test_serving_http.py checks
that /livez and /readyz answer on a real `prodguard serve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_compose import _parse, _setting_exists, _template_variables

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
# the API versions the manifests are claimed to work on (docs: deploy/kubernetes/README.md)
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


def _resources() -> list[dict[str, Any]]:
    docs = []
    for name in _kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]
    return docs


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _resources() if d["kind"] == kind}


def _containers() -> list[dict[str, Any]]:
    return [
        c
        for d in _of_kind("Deployment").values()
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def _secret_keys() -> set[str]:
    keys = set()
    for line in (K8S / "secrets.env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            keys.add(line.partition("=")[0].strip())
    return keys


def test_the_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    generated = _kustomization()["secretGenerator"]
    assert [g["name"] for g in generated] == ["prodguard-secrets"]
    assert generated[0]["envs"] == ["secrets.env"]
    assert not (K8S / "secrets.env").exists(), "secrets.env must never be committed"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_validates_against_the_kubernetes_api_schema(version: str) -> None:
    import kubernetes_validate

    resources = _resources()
    assert {d["kind"] for d in resources} >= {
        "Namespace",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for document in resources:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    import kubernetes_validate

    deployment = _of_kind("Deployment")["prodguard-serve"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_prodguard_command_parses_with_the_real_cli() -> None:
    import typer

    from prodguard.cli import cli

    commands = [c["command"] for c in _containers()]
    assert sorted(c[1] for c in commands) == ["guard", "monitor", "serve"]
    for command in commands:
        assert command[0] == "prodguard"
        unknown = _parse(typer.main.get_command(cli), command[1:])
        assert not unknown, f"prodguard {command[1]} has no option(s) {unknown}"
    loops = [c for c in commands if c[1] in ("monitor", "guard")]
    assert all("--every" in c for c in loops), "the monitor and guard must loop (--every)"


def test_variables_are_settings_or_template_variables_and_secrets_stay_secret() -> None:
    config = _of_kind("ConfigMap")["prodguard-env"]["data"]
    templates = _template_variables()
    for key in [*config, *_secret_keys()]:
        if not key.startswith("PRODGUARD_") or key in ("PRODGUARD_ENV", "PRODGUARD_CONFIG"):
            continue
        if "__" in key:
            assert _setting_exists(key), f"{key} is no setting of prodguard.yaml"
        else:
            assert key in templates, f"{key} is used by no production config file"
    required = {name for name, has_default in templates.items() if not has_default}
    assert required <= set(config) | _secret_keys(), "a ${VAR} without default is never set"
    for key, value in config.items():
        assert not any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")), key
        assert "@" not in str(value), f"{key}: credentials belong in secrets.env"
    for container in _containers():
        assert "env" not in container, "variables come from the ConfigMap and the Secret only"
        refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
        assert refs == ["prodguard-env", "prodguard-secrets"]


def test_production_settings_load_with_the_pods_environment(tmp_path: Path) -> None:
    from prodguard.config import load_settings

    environ = dict(_of_kind("ConfigMap")["prodguard-env"]["data"])
    environ.pop("PRODGUARD_CONFIG")
    environ.pop("PRODGUARD_PATHS__DATA_DIR")  # the pod's volume; a folder of the test here
    environ["PRODGUARD_PATHS__DATA_DIR"] = str(tmp_path / "data")
    environ.update({k: f"test-{k.lower()}" for k in _secret_keys()})
    environ["PRODGUARD_DATABASE_URL"] = "postgresql+psycopg://prodguard:pw@db:5432/prodguard"
    environ["PRODGUARD_ALERTS__WEBHOOK_URL"] = "null"
    settings = load_settings(ROOT / "prodguard.yaml", environ=environ)
    assert settings.environment == "production"
    assert settings.storage.url is not None and "db:5432" in settings.storage.url


def test_probes_and_scrape_annotations_use_the_ports_the_containers_open() -> None:
    deployments = _of_kind("Deployment")
    serve = deployments["prodguard-serve"]["spec"]["template"]
    container = serve["spec"]["containers"][0]
    port = container["command"][container["command"].index("--port") + 1]
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert serve["metadata"]["annotations"]["prometheus.io/port"] == port
    monitor = deployments["prodguard-monitor"]["spec"]["template"]
    command = monitor["spec"]["containers"][0]["command"]
    metrics_port = command[command.index("--metrics-port") + 1]
    assert monitor["metadata"]["annotations"]["prometheus.io/port"] == metrics_port
    selector = serve["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        for resource in _of_kind(kind).values():
            spec = resource["spec"]
            match = spec["selector"].get("matchLabels", spec["selector"])
            assert match.items() <= selector.items(), f"{kind} selects no serving pod"
    hpa = _of_kind("HorizontalPodAutoscaler")["prodguard-serve"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "prodguard-serve"
    assert hpa["minReplicas"] >= 2, "a standby-ready service keeps two replicas"
