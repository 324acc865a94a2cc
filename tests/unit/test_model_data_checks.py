"""Where the settings meet the data: a wrong model.label, model.entity_keys or source key is
one line naming the setting (exit 2), the same check before training, a replay (baseline,
drill) and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from prodguard.errors import ConfigError
from prodguard.monitoring.jobs import replay_predictor
from prodguard.training.dataset import check_model_data, check_model_source

COLUMNS = ["flight_id", "event_timestamp", "origin", "carrier", "tailnum", "delayed", "distance"]


@dataclass(frozen=True)
class View:
    join_keys: tuple[str, ...]


VIEWS = [View(("origin",)), View(("carrier",)), View(("tailnum",))]


def ingest(settings: Any, columns: list[str]) -> Path:
    path = Path(settings.paths.offline_dir) / f"{settings.model.source}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({c: ["x"] for c in columns}).to_parquet(path)
    return path


def with_model(settings: Any, **changes: Any) -> Any:
    return settings.model_copy(update={"model": settings.model.model_copy(update=changes)})


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and exc.value.exit_code == 2
    return message


def test_settings_that_fit_the_data_pass(settings: Any) -> None:
    check_model_data(settings, COLUMNS, ["origin", "carrier", "tailnum"])
    check_model_data(settings, None, ["origin"])  # nothing ingested: the join keys only


def test_an_entity_key_that_is_no_column_names_the_setting_and_the_columns(settings: Any) -> None:
    wrong = with_model(settings, entity_keys=["origin", "carrier", "winery"])
    with pytest.raises(ConfigError) as refused:
        check_model_data(wrong, COLUMNS)
    message = one_line(refused)
    assert "model.entity_keys ['winery']" in message and "tailnum" in message


def test_a_label_that_is_no_column_names_the_setting_and_the_columns(settings: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        check_model_data(with_model(settings, label="variety"), COLUMNS)
    message = one_line(refused)
    assert "model.label 'variety'" in message and "delayed" in message


def test_a_source_key_that_is_no_column_names_the_setting(settings: Any) -> None:
    source = settings.sources["flights"].model_copy(update={"keys": ["winery", "event_timestamp"]})
    wrong = settings.model_copy(update={"sources": {**settings.sources, "flights": source}})
    with pytest.raises(ConfigError) as refused:
        check_model_data(wrong, COLUMNS)
    assert "sources.flights.keys ['winery']" in one_line(refused)


def test_without_ingested_rows_a_missing_join_key_is_still_refused(settings: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        check_model_source(with_model(settings, entity_keys=["winery"]), VIEWS)
    assert "lack the feature service's join keys" in one_line(refused)


def test_the_source_columns_are_read_from_the_offline_store(settings: Any) -> None:
    ingest(settings, [c for c in COLUMNS if c != "delayed"])
    with pytest.raises(ConfigError, match="model.label 'delayed'"):
        check_model_source(settings, VIEWS)


@pytest.mark.parametrize(
    "setting, value, names",
    [
        ("entity_keys", ["origin", "carrier", "winery"], "model.entity_keys"),
        ("label", "variety", "model.label"),
    ],
)
def test_a_replay_refuses_wrong_model_settings_before_it_serves(
    settings: Any, setting: str, value: Any, names: str
) -> None:
    """Baselines and drills replay through replay_predictor: a wrong label used to replay
    with no outcomes and record a baseline without a KPI, a wrong entity key with every
    feature degraded."""
    ingest(settings, COLUMNS)
    with pytest.raises(ConfigError, match=names):
        replay_predictor(with_model(settings, **{setting: value}), VIEWS, log=None)  # type: ignore[arg-type]


def test_serve_refuses_an_entity_key_that_is_no_column(settings: Any) -> None:
    from prodguard import app

    ingest(settings, COLUMNS)
    app.serve_command(settings, "127.0.0.1", 3000)
    wrong = with_model(settings, entity_keys=["origin", "carrier", "winery"])
    with pytest.raises(ConfigError, match=r"model.entity_keys \['winery'\]"):
        app.serve_command(wrong, "127.0.0.1", 3000)
