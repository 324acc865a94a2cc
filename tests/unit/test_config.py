from pathlib import Path

import pytest

from prodguard.config import load_settings
from prodguard.errors import ConfigError

pytestmark = pytest.mark.unit


def test_loads_example_and_resolves_paths(project: Path) -> None:
    settings = load_settings(project / "prodguard.yaml", environ={})
    assert settings.project.name == "flights"
    assert settings.paths.data_dir == (project / ".prodguard").resolve()
    assert settings.feature_store.config == (project / "feature_repo/feature_store.yaml").resolve()
    assert set(settings.sources) == {"weather", "planes", "carrier_stats", "flights"}
    assert settings.sources["planes"].static is True
    assert settings.suite_path("weather") == (project / "expectations/weather.json").resolve()


def test_env_overrides_nested_keys(project: Path, tmp_path: Path) -> None:
    env = {
        "PRODGUARD_PATHS__DATA_DIR": str(tmp_path / "elsewhere"),
        "PRODGUARD_INGEST__BATCH": "day",
        "PRODGUARD_SOURCES__PLANES__KEYS": "[tailnum, event_timestamp]",
    }
    settings = load_settings(project / "prodguard.yaml", environ=env)
    assert settings.paths.data_dir == tmp_path / "elsewhere"
    assert settings.ingest.batch == "day"
    assert settings.sources["planes"].keys == ["tailnum", "event_timestamp"]


def test_config_env_var_names_the_file(project: Path) -> None:
    settings = load_settings(None, environ={"PRODGUARD_CONFIG": str(project / "prodguard.yaml")})
    assert settings.config_path == (project / "prodguard.yaml").resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("project: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("project:\n  name: x\n  loader: nope\n", "project.loader: Value error, must look like"),
    ],
)
def test_malformed_files_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prodguard.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_key_is_named(project: Path) -> None:
    path = project / "prodguard.yaml"
    path.write_text(path.read_text().replace("  batch: month", "  batch: month\n  bacth: day"))
    with pytest.raises(ConfigError, match=r"ingest\.bacth: unknown key"):
        load_settings(path, environ={})


def test_missing_required_key_is_named(project: Path) -> None:
    path = project / "prodguard.yaml"
    path.write_text(path.read_text().replace("    keys: [tailnum]\n", ""))
    with pytest.raises(ConfigError, match=r"sources\.planes\.keys: required key is missing"):
        load_settings(path, environ={})


def test_bad_env_value_is_named(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"ingest\.batch"):
        load_settings(project / "prodguard.yaml", environ={"PRODGUARD_INGEST__BATCH": "weekly"})
    with pytest.raises(ConfigError, match="PRODGUARD_PATHS__DATA_DIR__X: 'data_dir' is not a"):
        load_settings(project / "prodguard.yaml", environ={"PRODGUARD_PATHS__DATA_DIR__X": "1"})


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "PRODGUARD_SERVING__WORKRES",
            "PRODGUARD_SERVING__WORKRES: unknown setting serving.workres (from the environment); "
            "did you mean serving.workers?",
        ),
        (
            "PRODGUARD_SERVNG__WORKERS",
            "PRODGUARD_SERVNG__WORKERS: unknown setting servng.workers (from the environment); "
            "did you mean serving.workers?",
        ),
        (
            "PRODGUARD_SOURCES__PLANES__KEYZ",
            "PRODGUARD_SOURCES__PLANES__KEYZ: unknown setting sources.planes.keyz (from the "
            "environment); did you mean sources.planes.keys?",
        ),
        (
            "PRODGUARD_ZZZ__QQQ",
            "PRODGUARD_ZZZ__QQQ: unknown setting zzz.qqq (from the environment); remove the "
            "variable or check its spelling",
        ),
    ],
)
def test_an_env_override_typo_names_the_variable_not_the_file(
    project: Path, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(project / "prodguard.yaml", environ={key: "2"})
    assert str(caught.value) == message


def test_an_env_override_value_names_the_variable(project: Path) -> None:
    environ = {"PRODGUARD_SERVING__WORKERS": "many", "PRODGUARD_PATHS__DATA_DIR": "/srv/x"}
    with pytest.raises(ConfigError) as caught:
        load_settings(project / "prodguard.yaml", environ=environ)
    assert str(caught.value) == (
        "PRODGUARD_SERVING__WORKERS: serving.workers: Input should be a valid integer, unable to "
        "parse string as an integer (from the environment)"
    )
    # a section's own check on the file's values and an overridden one names both
    with pytest.raises(ConfigError) as caught:
        load_settings(
            project / "prodguard.yaml", environ={"PRODGUARD_MONITORING__PSI__CRITICAL": "0.05"}
        )
    assert str(caught.value).startswith(
        "prodguard.yaml with PRODGUARD_MONITORING__PSI__CRITICAL from the environment: "
        "monitoring.psi: Value error, critical must be at least warning"
    )
    # an override that makes a section the file never completes (a misspelt source name)
    with pytest.raises(ConfigError) as caught:
        environ = {"PRODGUARD_SOURCES__PLANEZ__KEYS": "[a]"}
        load_settings(project / "prodguard.yaml", environ=environ)
    assert str(caught.value).startswith(
        "prodguard.yaml with PRODGUARD_SOURCES__PLANEZ__KEYS from the environment: sources.planez."
    )


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; run from the project folder"):
        load_settings(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PRODGUARD_ROLLOUT__CANARY_STEPS", "[25, 5, 100]", "rollout.canary_steps: Value error"),
        ("PRODGUARD_ROLLOUT__STANDBY_HOURS", "24", "rollout.standby_hours"),
        ("PRODGUARD_MONITORING__PSI__CRITICAL", "0.05", "critical must be at least warning"),
        ("PRODGUARD_MONITORING__WINDOW__MINUTES", "null", "give minutes, rows or both"),
        ("PRODGUARD_ALERTS__WEBHOOK_URL", "ftp://x", "must be an http:// or https:// URL"),
    ],
)
def test_monitoring_and_rollout_settings_are_checked(
    project: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(project / "prodguard.yaml", environ={key: value})


def test_each_service_gets_its_own_bentoml_home(settings) -> None:
    """BentoML wipes its Prometheus multiprocess folder at start: replicas must not share it."""
    from prodguard import app

    homes = {app.serve_command(settings, "127.0.0.1", port)[1]["BENTOML_HOME"] for port in (1, 2)}
    assert len(homes) == 2
    # memory-mapped metric files stay off the data volume (a full disk would kill the worker)
    assert not any(Path(h).is_relative_to(settings.paths.data_dir) for h in homes)
    other = settings.model_copy(
        update={"paths": settings.paths.model_copy(update={"data_dir": Path("/srv/other")})}
    )
    assert app.serve_command(other, "127.0.0.1", 1)[1]["BENTOML_HOME"] not in homes


def test_debug_switch_is_not_a_setting(project: Path) -> None:
    assert load_settings(project / "prodguard.yaml", environ={"PRODGUARD_DEBUG": "1"})


PRODUCTION = {
    "PRODGUARD_ENV": "production",
    "PRODGUARD_DATABASE_URL": "postgresql+psycopg://prodguard@db.internal:5432/prodguard",
}


def test_production_environment_is_one_switch(project: Path) -> None:
    local = load_settings(project / "prodguard.yaml", environ={})
    assert local.environment == "local" and local.storage.url is None
    assert local.registry.config.name == "local.yaml" and not local.rollout.require_drill

    settings = load_settings(project / "prodguard.yaml", environ=PRODUCTION)
    assert settings.environment == "production"
    assert settings.storage.url == PRODUCTION["PRODGUARD_DATABASE_URL"]
    assert settings.registry.config == project / "mlruns_config" / "production.yaml"
    assert settings.feature_store.config == (
        project / "feature_repo" / "feature_store.production.yaml"
    )
    assert settings.rollout.require_drill
    # merged, not replaced: the rest of each section stays
    assert settings.rollout.canary_steps == local.rollout.canary_steps
    # PRODGUARD_<SECTION>__<KEY> still wins over the environment's section
    later = load_settings(
        project / "prodguard.yaml", environ={**PRODUCTION, "PRODGUARD_ROLLOUT__REQUIRE_DRILL": "0"}
    )
    assert not later.rollout.require_drill


def test_production_needs_its_variables(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"unset environment variable\(s\) \['PRODGUARD_DATA"):
        load_settings(project / "prodguard.yaml", environ={"PRODGUARD_ENV": "production"})


def test_unknown_environment_names_the_known_ones(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"PRODGUARD_ENV=staging: .*\(environments: production\)"):
        load_settings(project / "prodguard.yaml", environ={"PRODGUARD_ENV": "staging"})


def test_storage_url_must_be_postgresql(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.url: .*postgresql://"):
        load_settings(
            project / "prodguard.yaml", environ={"PRODGUARD_STORAGE__URL": "mysql://u@h/db"}
        )


def test_a_password_written_into_the_file_is_refused(project: Path) -> None:
    path = project / "prodguard.yaml"
    secret = "postgresql://prodguard:hunter2@db:5432/prodguard"
    path.write_text(path.read_text() + f"\n  url2: {secret}\n".replace("  url2", "x_url"))
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert "holds a password" in str(error.value) and "hunter2" not in str(error.value)


def test_template_variables_are_not_settings(project: Path) -> None:
    """PRODGUARD_DATABASE_URL & co are filled into files; they are not unknown settings."""
    settings = load_settings(
        project / "prodguard.yaml", environ={"PRODGUARD_REDIS": "127.0.0.1:6379"}
    )
    assert settings.environment == "local"
