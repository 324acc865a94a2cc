"""Evidently adapter: HTML drift reports for human review, and an index page over them.

The only module of ``prodguard.monitoring`` that imports ``evidently`` (0.7 API), lazily, with
telemetry off. Drift is Evidently's PSI stat test per column; the drifted columns are the ones
whose Evidently ``ValueDrift`` test failed. Each report states inside itself how many rows of each
side were compared (sides larger than ``max_rows`` are sampled with a fixed seed).

``reports_dir`` holds the report files, ``index.json`` (a list of :class:`ReportEntry` documents,
newest last) and ``index.html`` (a self-contained table of them, newest first).
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from prodguard.durable import locked, write_json_atomic, write_text_atomic
from prodguard.errors import InputError, ProdguardError, StorageError
from prodguard.telemetry import disable_telemetry

INDEX_JSON = "index.json"
INDEX_HTML = "index.html"
_INDEX_LOCK = ".index.lock"
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_REPORT_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.html")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


@dataclass(frozen=True)
class ReportEntry:
    """One report of ``reports_dir``, as listed in ``index.json``."""

    file: str
    title: str
    created: str
    reference_rows: int
    reference_total: int
    current_rows: int
    current_total: int
    columns: int
    drifted: list[str]
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    prediction: str | None,
    reports_dir: Path,
    name: str,
    title: str,
    now: datetime,
    max_rows: int = 20_000,
    seed: int = 0,
    psi_threshold: float = 0.1,
    details: dict[str, Any] | None = None,
) -> ReportEntry:
    """Write ``reports_dir/<name>.html`` (PSI drift of every listed column, current against
    reference) atomically, record it in ``index.json`` (an entry with the same file is replaced)
    and regenerate ``index.html``.

    ``prediction`` is a numeric score column compared like a feature. Each side larger than
    ``max_rows`` is sampled to ``max_rows`` rows with ``random_state=seed``; the report states the
    sizes. ``now`` must be timezone-aware. Bad input raises ``InputError``; an Evidently failure
    raises ``ProdguardError``; a file that cannot be written raises ``StorageError``.
    """
    stem = _file_stem(name)
    created = _utc_iso(now)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InputError("max_rows must be a positive integer")
    if (
        isinstance(psi_threshold, bool)
        or not isinstance(psi_threshold, int | float)
        or not math.isfinite(psi_threshold)
        or psi_threshold <= 0
    ):
        raise InputError("psi_threshold must be a finite positive number (Evidently's default 0.1)")
    roles = _column_roles(numeric, categorical, prediction)
    columns = list(roles)
    for label, frame in (("reference", reference), ("current", current)):
        _check_frame(label, frame, roles)

    ref = _prepare(reference[columns], roles, max_rows, seed)
    cur = _prepare(current[columns], roles, max_rows, seed)
    for label, frame in (("reference", ref), ("current", cur)):
        _check_values(label, frame, roles)

    extras = dict(details or {})
    note = _note_text(
        ref_rows=(len(ref), len(reference)),
        cur_rows=(len(cur), len(current)),
        seed=seed,
        roles=roles,
        psi_threshold=psi_threshold,
        created=created,
        details=extras,
    )
    html_text, drifted = _run_evidently(
        ref, cur, roles, psi_threshold=psi_threshold, title=title, note=note, stem=stem
    )

    reports_dir = Path(reports_dir)
    file = f"{stem}.html"
    write_text_atomic(html_text, reports_dir / file)
    entry = ReportEntry(
        file=file,
        title=title,
        created=created,
        reference_rows=len(ref),
        reference_total=len(reference),
        current_rows=len(cur),
        current_total=len(current),
        columns=len(columns),
        drifted=drifted,
        details=extras,
    )
    with locked(reports_dir / _INDEX_LOCK):
        entries = [e for e in _read_index(reports_dir) if e.get("file") != file]
        entries.append(entry.to_json())
        write_json_atomic(entries, reports_dir / INDEX_JSON)
        _render_index(reports_dir, entries)
    return entry


def write_index(reports_dir: Path) -> Path:
    """Regenerate ``reports_dir/index.html`` from ``index.json`` and return its path."""
    reports_dir = Path(reports_dir)
    with locked(reports_dir / _INDEX_LOCK):
        return _render_index(reports_dir, _read_index(reports_dir))


# -- input checks --------------------------------------------------------------------------------


def _file_stem(name: str) -> str:
    stem = _UNSAFE_NAME.sub("_", str(name)).strip("._-")
    if stem.lower().endswith(".html"):
        stem = stem[: -len(".html")].rstrip("._-")
    if not stem:
        raise InputError("report name is empty once sanitised: use letters, digits, '.', '_', '-'")
    if stem.lower() == Path(INDEX_HTML).stem:
        raise InputError("report name 'index' is reserved for the index page: pick another name")
    return stem


def _utc_iso(now: datetime) -> str:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InputError("now must be a timezone-aware datetime (use the injected clock)")
    return now.astimezone(UTC).isoformat()


def _column_roles(
    numeric: Sequence[str], categorical: Sequence[str], prediction: str | None
) -> dict[str, str]:
    """Column name -> "numeric" | "categorical" | "prediction", in report order."""
    for label, names in (("numeric", numeric), ("categorical", categorical)):
        if isinstance(names, str):
            raise InputError(f"{label} must be a list of column names, not one string")
    roles: dict[str, str] = {}
    listed = [(n, "numeric") for n in numeric] + [(n, "categorical") for n in categorical]
    if prediction is not None:
        listed.append((prediction, "prediction"))
    for column, role in listed:
        if not isinstance(column, str) or not column:
            raise InputError(f"every {role} column name must be a non-empty string")
        if column in roles:
            if roles[column] == role:
                raise InputError(f"column '{column}' is listed twice as {role}: list it once")
            raise InputError(
                f"column '{column}' is listed as both {roles[column]} and {role}: "
                "list each column under exactly one kind"
            )
        roles[column] = role
    if not roles:
        raise InputError("no columns to compare: list numeric and/or categorical columns")
    return roles


def _check_frame(label: str, frame: pd.DataFrame, roles: dict[str, str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"the {label} data must be a pandas DataFrame")
    if len(frame) == 0:
        raise InputError(f"the {label} data has no rows: pick a window that holds data")
    missing = [c for c in roles if c not in frame.columns]
    if missing:
        raise InputError(
            f"the {label} data lacks listed column(s) {', '.join(map(repr, missing))}: "
            "add them or remove them from the column lists"
        )
    if frame.columns.duplicated().any():
        raise InputError(f"the {label} data has duplicated column names: make them unique")
    for column, role in roles.items():
        if role == "categorical":
            continue
        dtype = frame[column].dtype
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
            raise InputError(
                f"{role} column '{column}' has dtype {dtype} in the {label} data: convert it to "
                "a number or list it as categorical"
            )


def _check_values(label: str, frame: pd.DataFrame, roles: dict[str, str]) -> None:
    for column, role in roles.items():
        values = frame[column]
        if values.notna().sum() == 0:
            raise InputError(
                f"column '{column}' has no non-null values in the compared {label} rows: "
                "fix the data or leave the column out"
            )
        if role != "categorical" and np.isinf(values.to_numpy()).any():
            raise InputError(
                f"{role} column '{column}' holds infinite values in the compared {label} rows: "
                "replace them with nulls or drop those rows"
            )


def _prepare(frame: pd.DataFrame, roles: dict[str, str], max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows (seeded sample), numeric columns as float64 (nulls as NaN:
    Evidently fails on nullable integer columns)."""
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed)
    numbers = {c: "float64" for c, role in roles.items() if role != "categorical"}
    return frame.astype(numbers) if numbers else frame


# -- the report ----------------------------------------------------------------------------------


def _rows_statement(label: str, used: int, total: int, seed: int) -> str:
    if used < total:
        return f"{label}: {used:,} of {total:,} rows sampled at random (seed {seed})"
    return f"{label}: all {total:,} rows"


def _md(text: object) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _note_text(
    *,
    ref_rows: tuple[int, int],
    cur_rows: tuple[int, int],
    seed: int,
    roles: dict[str, str],
    psi_threshold: float,
    created: str,
    details: dict[str, Any],
) -> str:
    kinds = {k: [c for c, r in roles.items() if r == k] for k in ("numeric", "categorical")}
    predictions = [c for c, r in roles.items() if r == "prediction"]
    compared = f"{len(roles)} columns ({len(kinds['numeric'])} numeric"
    compared += f", {len(kinds['categorical'])} categorical"
    compared += f", prediction {_md(predictions[0])})" if predictions else ")"
    lines = [
        f"- {_rows_statement('reference', *ref_rows, seed)}",
        f"- {_rows_statement('current', *cur_rows, seed)}",
        f"- compared: {compared}",
        f"- drift test: PSI per column; a column drifts when PSI >= {psi_threshold:g}",
        f"- created: {_md(created)}",
    ]
    for key in sorted(details, key=str):
        value = details[key]
        shown = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        lines.append(f"- {_md(key)}: {_md(shown)[:300]}")
    return "\n".join(lines)


def _summary_rows(ref: pd.DataFrame, cur: pd.DataFrame, roles: dict[str, str]) -> list[list[str]]:
    """Per-column value summaries of the compared rows (cheap pandas stats, no plots)."""

    def describe(values: pd.Series, role: str) -> str:
        missing = f"missing {values.isna().mean():.1%}"
        if role == "categorical":
            shares = values.value_counts(normalize=True, dropna=True)
            top = str(shares.index[0])
            top = top if len(top) <= 40 else top[:39] + "…"
            return (
                f"{len(shares)} categories, most frequent {top!r} {shares.iloc[0]:.1%}, {missing}"
            )
        numbers = values.astype("float64")
        return (
            f"mean {numbers.mean():.4g}, std {numbers.std():.4g}, median {numbers.median():.4g}, "
            f"min {numbers.min():.4g}, max {numbers.max():.4g}, {missing}"
        )

    return [
        [column, role, describe(ref[column], role), describe(cur[column], role)]
        for column, role in roles.items()
    ]


@functools.cache
def _widgets_container() -> type[Any]:
    """An Evidently metric container that computes nothing and shows fixed text/table widgets
    (Evidently 0.7 reports have no other way to show free text). Built once, on first use."""
    from evidently.core.container import MetricContainer
    from evidently.legacy.renderers.html_widgets import table_data, text_widget

    class ProdguardNote(MetricContainer):
        heading: str
        text: str | None = None
        header: list[str] | None = None
        rows: list[list[str]] | None = None

        def generate_metrics(self, context: Any) -> list[Any]:
            return []

        def render(self, context: Any, child_widgets: Any = None) -> list[Any]:
            if self.text is not None:
                return [text_widget(title=self.heading, text=self.text)]
            return [table_data(title=self.heading, column_names=self.header, data=self.rows)]

    return ProdguardNote


def _run_evidently(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    roles: dict[str, str],
    *,
    psi_threshold: float,
    title: str,
    note: str,
    stem: str,
) -> tuple[str, list[str]]:
    """The report's HTML and the drifted columns (in ``roles`` order)."""
    disable_telemetry()
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError as exc:
        raise ProdguardError(
            f"evidently cannot be imported ({exc.name or 'evidently'}): install prodguard's "
            "pinned dependencies (make test creates .venv with them)"
        ) from None

    columns = list(roles)
    try:
        note_type = _widgets_container()
        definition = DataDefinition(
            numerical_columns=[c for c, r in roles.items() if r != "categorical"],
            categorical_columns=[c for c, r in roles.items() if r == "categorical"],
        )
        report = Report(
            [
                note_type(heading=title, text=note),
                DataDriftPreset(columns=columns, method="psi", threshold=psi_threshold),
                note_type(
                    heading="Value summaries of the compared rows",
                    header=["column", "kind", "reference", "current"],
                    rows=_summary_rows(ref, cur, roles),
                ),
            ],
            include_tests=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            snapshot = report.run(
                Dataset.from_pandas(cur, data_definition=definition),
                Dataset.from_pandas(ref, data_definition=definition),
                name=title,
            )
        results = snapshot.dict()
        html_text = snapshot.get_html_str(as_iframe=False)
    except Exception as exc:
        raise ProdguardError(
            f"Evidently failed to build drift report '{stem}' ({type(exc).__name__}); the input "
            "passed prodguard's checks, so rerun it with Evidently directly to see why"
        ) from exc

    status: dict[str, str] = {}
    for test in results.get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if str(params.get("type", "")).endswith(":ValueDrift") and params.get("column") in roles:
            status[params["column"]] = str(getattr(test.get("status"), "value", test.get("status")))
    unknown = [c for c in columns if status.get(c) not in ("SUCCESS", "FAIL")]
    if unknown:
        raise ProdguardError(
            f"Evidently returned no drift verdict for column(s) {', '.join(map(repr, unknown))} "
            f"of report '{stem}'"
        )
    drifted = [c for c in columns if status[c] == "FAIL"]
    return _finish_html(html_text, title), drifted


def _finish_html(text: str, title: str) -> str:
    """Give the page a <title>, and keep every '<' out of Evidently's inline data script so that
    no value (a category, a column name, the title) can close that script early."""
    text = text.replace("<head>", f"<head>\n<title>{html.escape(title)}</title>", 1)
    start = text.find("<script>\n    var metric_")
    if start < 0:
        return text
    body_start = start + len("<script>")
    match = re.match(r"\s*var (metric_[0-9a-f]+) =", text[body_start:])
    if match is None:
        return text
    root = text.find(f'<div id="root_{match.group(1)}">', body_start)
    end = text.rfind("</script>", body_start, root) if root > 0 else -1
    if end < 0:
        return text
    return text[:body_start] + text[body_start:end].replace("<", "\\u003c") + text[end:]


# -- the index -----------------------------------------------------------------------------------


def _read_index(reports_dir: Path) -> list[dict[str, Any]]:
    path = reports_dir / INDEX_JSON
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise StorageError(
            f"{path} is not valid JSON: fix it, or delete it to start a new report index"
        ) from None
    if not isinstance(document, list):
        raise StorageError(f"{path} is not a JSON list: fix it, or delete it to start anew")
    return [entry for entry in document if isinstance(entry, dict)]


def _rows_cell(entry: dict[str, Any], side: str) -> str:
    used, total = entry.get(f"{side}_rows"), entry.get(f"{side}_total")
    if not isinstance(used, int) or not isinstance(total, int):
        return "?"
    return f"{used:,}" if used == total else f"{used:,} of {total:,}"


def _index_row(reports_dir: Path, entry: dict[str, Any]) -> str:
    esc = html.escape
    file = entry.get("file")
    title = esc(str(entry.get("title") or file or "?"))
    link = "(file missing)"
    if isinstance(file, str) and _REPORT_FILE.fullmatch(file) and (reports_dir / file).is_file():
        title = f'<a href="{esc(quote(file))}">{title}</a>'
        link = f'<a href="{esc(quote(file))}">{esc(file)}</a>'
    drifted = entry.get("drifted")
    drifted = [str(d) for d in drifted] if isinstance(drifted, list) else []
    columns = entry.get("columns")
    count = f"{len(drifted)} of {columns}" if isinstance(columns, int) else str(len(drifted))
    names = f"<br><small>{esc(', '.join(drifted))}</small>" if drifted else ""
    found = entry.get("details")
    details = found if isinstance(found, dict) else {}
    shown = "<br>".join(
        f"{esc(str(k))}: {esc(v if isinstance(v, str) else json.dumps(v, default=str))}"
        for k, v in sorted(details.items(), key=lambda kv: str(kv[0]))
    )
    cells = [
        title,
        esc(str(entry.get("created", "?"))),
        _rows_cell(entry, "reference"),
        _rows_cell(entry, "current"),
        f'<span class="{"drift" if drifted else "ok"}">{count}</span>{names}',
        f"<small>{shown}</small>",
        link,
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_INDEX_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Drift reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.35em 0.7em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td:nth-child(2), td:nth-child(3), td:nth-child(4) {{ white-space: nowrap; }}
.drift {{ color: #b00020; font-weight: bold; }}
.ok {{ color: #1b7f3b; }}
</style>
</head>
<body>
<h1>Drift reports</h1>
<p>{summary}</p>
<table>
<thead><tr><th>title</th><th>created</th><th>reference rows</th><th>current rows</th>
<th>drifted columns</th><th>details</th><th>file</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


def _render_index(reports_dir: Path, entries: list[dict[str, Any]]) -> Path:
    rows = "\n".join(_index_row(reports_dir, entry) for entry in reversed(entries))
    summary = f"{len(entries)} report(s), newest first." if entries else "No reports yet."
    page = _INDEX_PAGE.format(summary=summary, rows=rows)
    path = reports_dir / INDEX_HTML
    write_text_atomic(page, path)
    return path
