"""Evidently drift reports: drifted columns, stated sample sizes, the index page, bad input."""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prodguard.errors import InputError, ProdguardError, StorageError
from prodguard.monitoring.evidently_report import ReportEntry, write_drift_report, write_index

pytestmark = pytest.mark.integration

NOW = datetime(2013, 6, 1, 12, 0, tzinfo=UTC)
NUMERIC = ["distance", "dep_hour", "temp"]
CATEGORICAL = ["carrier"]
CARRIERS = ["AA", "B6", "DL", "EV", "UA"]


def flights(rows: int, seed: int, *, shift: str | None = None) -> pd.DataFrame:
    """Synthetic rows; ``shift`` names the one column whose distribution moves a lot."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "distance": rng.gamma(4.0, 250.0, rows),
            "dep_hour": rng.normal(13.0, 4.0, rows),
            "temp": rng.normal(15.0, 8.0, rows),
            "carrier": rng.choice(CARRIERS, rows),
            "score": rng.beta(2.0, 5.0, rows),
            "unused": rng.normal(size=rows),
        }
    )
    if shift == "dep_hour":
        frame["dep_hour"] += 6.0  # 1.5 standard deviations
    elif shift == "carrier":
        frame["carrier"] = rng.choice(CARRIERS, rows, p=[0.6, 0.1, 0.1, 0.1, 0.1])
    elif shift == "score":
        frame["score"] = rng.beta(5.0, 2.0, rows)
    return frame


def report(reference: pd.DataFrame, current: pd.DataFrame, reports_dir: Path, **kwargs):
    arguments = {
        "numeric": NUMERIC,
        "categorical": CATEGORICAL,
        "prediction": "score",
        "reports_dir": reports_dir,
        "name": "drift_2013-05-01_2013-06-01_v1",
        "title": "May vs April",
        "now": NOW,
    }
    arguments.update(kwargs)
    return write_drift_report(reference, current, **arguments)


def test_importing_the_module_does_not_import_evidently() -> None:
    code = "import sys, prodguard.monitoring.evidently_report; sys.exit('evidently' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("shift", "expected"),
    [(None, []), ("dep_hour", ["dep_hour"]), ("carrier", ["carrier"]), ("score", ["score"])],
)
def test_drifted_lists_exactly_the_shifted_column(
    tmp_path: Path, shift: str | None, expected: list[str]
) -> None:
    entry = report(flights(3000, seed=1), flights(2000, seed=2, shift=shift), tmp_path)
    assert entry.drifted == expected
    assert entry.columns == 5  # 3 numeric + 1 categorical + the score
    assert (entry.reference_rows, entry.reference_total) == (3000, 3000)
    assert (entry.current_rows, entry.current_total) == (2000, 2000)
    assert entry.created == "2013-06-01T12:00:00+00:00"
    assert entry.file == "drift_2013-05-01_2013-06-01_v1.html"


def test_sides_larger_than_max_rows_are_sampled_and_the_report_says_so(tmp_path: Path) -> None:
    reference, current = flights(5000, seed=3), flights(1500, seed=4, shift="dep_hour")
    entry = report(reference, current, tmp_path, max_rows=2000, seed=7)
    assert (entry.reference_rows, entry.reference_total) == (2000, 5000)
    assert (entry.current_rows, entry.current_total) == (1500, 1500)
    assert entry.drifted == ["dep_hour"]

    text = (tmp_path / entry.file).read_text(encoding="utf-8")
    assert "reference: 2,000 of 5,000 rows sampled at random (seed 7)" in text
    assert "current: all 1,500 rows" in text
    [listed] = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    assert listed == entry.to_json()
    assert (listed["reference_rows"], listed["reference_total"]) == (2000, 5000)

    both = report(flights(4000, seed=5), flights(3000, seed=6), tmp_path, max_rows=2500)
    text = (tmp_path / both.file).read_text(encoding="utf-8")
    assert "reference: 2,500 of 4,000 rows sampled at random (seed 0)" in text
    assert "current: 2,500 of 3,000 rows sampled at random (seed 0)" in text


def test_report_html_holds_title_and_sizes_and_needs_no_download(tmp_path: Path) -> None:
    reference = flights(1200, seed=8)
    current = flights(800, seed=9)
    current.loc[:50, "carrier"] = "</script><b>x"  # a value that must not break the page
    entry = report(
        reference,
        current,
        tmp_path,
        title="Drift review May 2013",
        details={"model_version": 3},
    )
    path = tmp_path / entry.file
    assert path.is_file() and path.stat().st_size > 0
    text = path.read_text(encoding="utf-8")
    assert "<title>Drift review May 2013</title>" in text
    assert "Drift review May 2013" in text.split("</head>")[0]
    assert "reference: all 1,200 rows" in text and "current: all 800 rows" in text
    assert "model\\\\_version: 3" in text  # the details, markdown-escaped inside the JSON
    assert "</script><b>x" not in text
    assert "<script src=" not in text  # Evidently's JS is inlined
    assert entry.details == {"model_version": 3}
    assert not list(tmp_path.glob(".*.tmp"))


def test_index_lists_every_report_with_links_to_existing_files(tmp_path: Path) -> None:
    reference = flights(1000, seed=10)
    first = report(reference, flights(800, seed=11), tmp_path, name="april", title="April <b>")
    second = report(reference, flights(800, seed=12), tmp_path, name="may", title="May")
    assert first.drifted == [] and second.drifted == []
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    for entry in (first, second):
        assert f'href="{entry.file}"' in page
        assert (tmp_path / entry.file).is_file()
    assert "April &lt;b&gt;" in page and "April <b>" not in page
    assert page.index("May") < page.index("April")  # newest first
    assert "<script" not in page and "http" not in page  # self-contained

    again = report(reference, flights(800, seed=13, shift="dep_hour"), tmp_path, name="april")
    listed = json.loads((tmp_path / "index.json").read_text(encoding="utf-8"))
    assert [e["file"] for e in listed] == ["may.html", "april.html"]  # replaced, newest last
    assert listed[-1]["drifted"] == ["dep_hour"] == again.drifted
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert page.count('href="april.html"') == 2  # title link + file link, one row
    assert "1 of 5" in page

    (tmp_path / "may.html").unlink()
    page = write_index(tmp_path).read_text(encoding="utf-8")
    assert 'href="may.html"' not in page and "(file missing)" in page


def test_write_index_on_an_empty_or_broken_folder(tmp_path: Path) -> None:
    page = write_index(tmp_path / "reports")
    assert page == tmp_path / "reports" / "index.html"
    assert "No reports yet." in page.read_text(encoding="utf-8")
    (tmp_path / "reports" / "index.json").write_text("[{", encoding="utf-8")
    with pytest.raises(StorageError, match="not valid JSON"):
        write_index(tmp_path / "reports")


def test_entry_round_trips_through_json() -> None:
    entry = ReportEntry("a.html", "A", NOW.isoformat(), 1, 2, 3, 4, 5, ["x"], {"k": [1]})
    assert ReportEntry(**json.loads(json.dumps(entry.to_json()))) == entry


def _bad(case: str, reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    """Arguments of ``report`` for one malformed call."""
    if case == "empty reference":
        return {"reference": reference.iloc[:0]}
    if case == "empty current":
        return {"current": current.iloc[:0]}
    if case == "column missing from current":
        return {"current": current.drop(columns=["temp"])}
    if case == "numeric and categorical overlap":
        return {"categorical": ["carrier", "temp"]}
    if case == "prediction also listed as a feature":
        return {"numeric": [*NUMERIC, "score"]}
    if case == "numeric column holds text":
        frame = reference.copy()
        frame["temp"] = "secret-value"
        return {"reference": frame}
    if case == "column is all null in current":
        frame = current.copy()
        frame["carrier"] = None
        return {"current": frame}
    if case == "infinite values":
        frame = current.copy()
        frame.loc[3, "distance"] = np.inf
        return {"current": frame}
    if case == "naive now":
        return {"now": datetime(2013, 6, 1)}
    if case == "reserved name":
        return {"name": "index"}
    if case == "name without safe characters":
        return {"name": "///"}
    if case == "no columns":
        return {"numeric": [], "categorical": [], "prediction": None}
    if case == "max_rows zero":
        return {"max_rows": 0}
    if case == "psi_threshold zero":
        return {"psi_threshold": 0.0}
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "empty reference",
        "empty current",
        "column missing from current",
        "numeric and categorical overlap",
        "prediction also listed as a feature",
        "numeric column holds text",
        "column is all null in current",
        "infinite values",
        "naive now",
        "reserved name",
        "name without safe characters",
        "no columns",
        "max_rows zero",
        "psi_threshold zero",
    ],
)
def test_bad_input_raises_input_error_and_writes_nothing(tmp_path: Path, case: str) -> None:
    arguments = {"reference": flights(300, seed=14), "current": flights(200, seed=15)}
    arguments.update(_bad(case, arguments["reference"], arguments["current"]))
    reference, current = arguments.pop("reference"), arguments.pop("current")
    with pytest.raises(InputError) as caught:
        report(reference, current, tmp_path / "reports", **arguments)
    message = str(caught.value)
    assert "\n" not in message and "secret-value" not in message
    assert not (tmp_path / "reports").exists()


def test_evidently_failure_is_a_one_line_prodguard_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evidently.core.report import Report

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("range of [1.5, secret] is not finite\nmore")

    monkeypatch.setattr(Report, "run", broken)
    with pytest.raises(ProdguardError) as caught:
        report(flights(300, seed=16), flights(200, seed=17), tmp_path)
    assert not isinstance(caught.value, InputError)
    assert "ValueError" in str(caught.value) and "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not any(tmp_path.iterdir())
