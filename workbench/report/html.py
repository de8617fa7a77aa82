"""The self-contained HTML report of one run: ``write_report(run_dir) -> <run>/index.html``.

The page opens with a summary (one row per model: its training, then the columns the
components register: clean and robust accuracy, Lipschitz ratio, soundness verdict, ...),
then the sections the components register (:mod:`workbench.views`), each with its figures,
one sentence on how to read each, and its tables, and the provenance of the run. This
module names no component: it draws what is registered. Figures are embedded as base64 PNG data
URIs and the CSS and script are inline, so the file can be mailed or archived alone and
opens without any network request; a Content-Security-Policy in the page makes the browser
enforce that. All text from the study or the tables goes through jinja2's autoescaping;
the only markup marked safe is the report's own script.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .. import components  # noqa: F401  (registers every component's figures)
from ..errors import RunFolderError
from ..results import Results, load
from ..present import NORM_LABEL, eps_label, model_order
from ..views import FigureSpec, ReportSection, details, figures, measures, notes, report_sections, resolve
from . import figures as F
from ..codehash import code_hash
from ..cache import ResultCache, cached_stage
from ..stages import StageOutput

log = logging.getLogger("workbench")


# --------------------------------------------------------------------------- templates


@lru_cache(maxsize=1)
def _env():
    # jinja2: only when a page is rendered
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("workbench.report", "templates"),
        autoescape=True,  # every {{ }} is escaped; user text is never marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=1)
def _script() -> tuple[str, str]:
    """The report's inline script and its CSP hash (only this exact script may run)."""
    text = resources.files("workbench.report").joinpath("templates/report.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return text, f"sha256-{digest}"


def render_page(template: str, **context: Any) -> str:
    """Render one of the templates with the inline script, its CSP hash and the version."""
    # markupsafe (jinja2's): only when a page is rendered
    from markupsafe import Markup

    script, digest = _script()
    return _env().get_template(template).render(
        script=Markup(script), script_hash=digest, version=_version(), **context  # our own constant, not user text
    )


def _version() -> str:
    try:
        return version("workbench")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- tables


@dataclass
class Cell:
    text: str
    sort: str | None = None
    cls: str = ""


@dataclass
class Row:
    cells: list[Cell]
    cls: str = ""


@dataclass
class Column:
    label: str
    title: str = ""


@dataclass
class HtmlTable:
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    id: str = ""


def _blank(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def format_value(v: Any, fmt: str = "auto") -> Cell:
    """One table cell: ``pct`` (fraction shown as a percentage), ``delta`` (signed, one
    decimal), ``num``, ``int``, ``sec``, ``text`` or ``auto``. ``sort`` keeps the exact number for the sorting script."""
    if _blank(v):
        return Cell("", "")
    if fmt == "text" or isinstance(v, (str, bytes)):
        return Cell(str(v))
    if isinstance(v, (bool, np.bool_)):
        return Cell("yes" if v else "no")
    if isinstance(v, (int, np.integer)) and fmt in ("auto", "int", "num"):
        return Cell(str(int(v)), str(int(v)), "num")
    if isinstance(v, (float, np.floating, int, np.integer)):
        x = float(v)
        if fmt == "pct":
            return Cell(f"{100 * x:.1f}", repr(x), "num")
        if fmt == "delta":
            return Cell(f"{x:+.1f}", repr(x), "num")
        if fmt == "sec":
            return Cell(f"{x:.1f}", repr(x), "num")
        if math.isfinite(x) and x == int(x) and abs(x) < 1e6 and fmt == "auto":
            return Cell(f"{int(x)}", repr(x), "num")
        return Cell(f"{x:.4g}", repr(x), "num")
    return Cell(str(v))


def html_table(df: pd.DataFrame, formats: Mapping[str, str] | None = None, *, titles: Mapping[str, str] | None = None,
               row_cls: Sequence[str] | None = None, cell_cls: Mapping[str, Sequence[str]] | None = None,
               id: str = "") -> HtmlTable:
    """A DataFrame as an :class:`HtmlTable` (the template escapes every string)."""
    formats = formats or {}
    titles = titles or {}
    t = HtmlTable([Column(str(c), titles.get(str(c), "")) for c in df.columns], id=id)
    for i, rec in enumerate(df.itertuples(index=False, name=None)):
        cells = []
        for c, v in zip(df.columns, rec):
            cell = format_value(v, formats.get(str(c), "auto"))
            if cell_cls and str(c) in cell_cls:
                cell.cls = f"{cell.cls} {cell_cls[str(c)][i]}".strip()
            cells.append(cell)
        t.rows.append(Row(cells, row_cls[i] if row_cls is not None else ""))
    return t


# --------------------------------------------------------------------------- summary


def summary_table(res: Results) -> pd.DataFrame:
    """One row per model: its training, then the columns the components register (clean and
    robust accuracy per attack at the main ε, the worst case, the Lipschitz ratio, the
    soundness verdict, ...: :func:`workbench.views.measures` with ``summary=True``).
    Accuracies are fractions; column labels carry the ε used; ``df.attrs`` holds the formats,
    each registered column's label and its cell classes."""
    rob = res.get("robustness")
    if rob is None:
        raise RunFolderError("table robustness is missing or empty", file=str(res.path / "tables" / "robustness.parquet"))
    main_eps = res.study.main_eps()
    models = model_order(res.tables)
    mt = res.get("models")
    info = mt.set_index(mt["model"].astype(str)) if mt is not None else None
    formats: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {m: {"model": m} for m in models}

    for m in models:
        training = ""
        if info is not None and m in info.index:
            r = info.loc[m]
            training = str(r["recipe"])
            if r.get("role") == "loaded":
                training = f"loaded: {r.get('source', '')}"
            elif r["train_norm"] != "none" and float(r["train_eps"]) > 0:
                training += f" ({NORM_LABEL.get(str(r['train_norm']), r['train_norm'])} ε={eps_label(float(r['train_eps']))})"
            if isinstance(r["stopped_early"], str) and r["stopped_early"]:
                training += f"; stopped early: {r['stopped_early']}"
        rows[m]["training"] = training

    # the columns the components register (workbench.views: accuracies, the Lipschitz ratio, the soundness verdict, ...)
    columns: dict[str, str] = {}
    classes: dict[str, dict[str, str]] = {}
    for measure in measures(summary=True):
        got = resolve(measure.compute)(res)
        for label, values, fmt in (got if measure.many else [(*got, measure.format)]):
            columns.setdefault(measure.name, label)
            formats[label] = fmt
            if measure.classes:
                classes[label] = dict(measure.classes)
            for m in models:
                rows[m][label] = values.get(m, "" if fmt == "text" else np.nan)

    df = pd.DataFrame(list(rows.values()))
    df.attrs["formats"] = formats
    df.attrs["columns"] = columns
    df.attrs["classes"] = classes
    df.attrs["main_eps"] = main_eps
    return df


def _summary_notes(res: Results, place: str = "summary") -> list[Any]:
    """The notes the components register for ``place`` (:func:`workbench.views.notes`), in order."""
    return [n for note in notes(place) for n in resolve(note.text)(res)]


# --------------------------------------------------------------------------- figures


@dataclass
class FigureEntry:
    name: str
    title: str
    caption: str
    section: str
    src: str
    width: int
    height: int
    files: list[tuple[str, str]]


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _draw_one(spec: FigureSpec, res: Results, main_eps: float) -> tuple[Any, str]:
    """(figure or None, why it is None)."""
    if spec.needs and all(res.get(t) is None for t in spec.needs):
        return None, f"table {' / '.join(spec.needs)} absent (probe or check not run)"
    try:
        if spec.arrays is not None:  # drawn from a file of the run's arrays/ (and the tables)
            path = res.path / "arrays" / spec.arrays
            if not path.is_file():
                return None, f"no arrays/{spec.arrays} (probe not run)"
            arrays = resolve(spec.load)(path) if spec.load is not None else dict(np.load(path, allow_pickle=False))
            return resolve(spec.draw)(arrays, res.tables), f"nothing to draw in arrays/{spec.arrays}"
        draw = resolve(spec.draw)
        params = inspect.signature(draw).parameters
        kwargs = {k: v for k, v in (("main_eps", main_eps), ("run_dir", res.path))
                  if k in params or any(p.kind is p.VAR_KEYWORD for p in params.values())}
        out = draw(res.tables, **kwargs)
        return out if isinstance(out, tuple) else (out, "nothing to draw in its table")
    except Exception as e:  # noqa: BLE001 - one broken figure must not cost the whole report
        log.warning("figure %s failed", spec.name, exc_info=True)
        return None, f"drawing failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"


def draw_figures(res: Results, out_dir: Path | None, formats: Sequence[str]) -> tuple[list[FigureEntry], list[str]]:
    """Draw every figure whose tables exist; return the entries and why the others were skipped."""
    entries: list[FigureEntry] = []
    skipped: list[str] = []
    main_eps = res.study.main_eps()
    for spec in figures():
        fig, reason = _draw_one(spec, res, main_eps)
        if fig is None:
            skipped.append(f"{spec.title}: {reason}.")
            if out_dir is not None:  # a stale file from an earlier report would contradict this one
                for fmt in ("png", "svg"):
                    (out_dir / f"{spec.name}.{fmt}").unlink(missing_ok=True)
            continue
        png, files = F.render(fig, spec.name, out_dir, formats)
        w, h = png_size(png)
        rel = [(fmt, f"{out_dir.name}/{p.name}") for fmt, p in files.items()] if out_dir is not None else []
        entries.append(FigureEntry(spec.name, spec.title, spec.caption, spec.section, data_uri(png), w, h, rel))
    return entries, skipped


# --------------------------------------------------------------------------- provenance


def _device_text(env: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    dev = env.get("device")
    if isinstance(dev, Mapping):
        extra = dev.get("gpu") or ", ".join(
            s for s in (dev.get("cpu"), f"{dev['threads']} torch thread(s)" if dev.get("threads") else None) if s)
        return f"{dev.get('name', dev.get('type', '?'))}" + (f" ({extra})" if extra else "")
    return str(run.get("device", "not recorded"))


def _provenance(res: Results, published: Path | None = None) -> list[tuple[str, str]]:
    env, run = res.environment, res.run
    seeds = [str(s) for s in res.study.seeds] if res.study.replicated else sorted(
        {str(s) for s in (res.study.seed, env.get("seed")) if s is not None})
    items = [
        ("run folder", str((published or res.path).resolve())),
        ("study", res.study.name),
        ("seeds (replicates)" if res.study.replicated else "seed", ", ".join(seeds)),
        ("started", str(env.get("started_at", run.get("started_at", "not recorded")))),
        ("finished", str(run.get("finished_at", "not recorded (run.json missing)"))),
        ("device", _device_text(env, run)),
        ("git commit", str(env.get("git_commit") or "not recorded (not a git checkout?)")),
        ("python", str(env.get("python", "not recorded"))),
        ("platform", str(env.get("platform", "not recorded"))),
        ("command", str(env.get("command", "not recorded"))),
        ("model store", str(run.get("store", "not recorded"))),
    ]
    cached = run.get("cached_stages")
    if isinstance(cached, list):  # runs before the result cache have no record
        items.append(("results reused from the store", ", ".join(map(str, cached)) if cached else "none (all computed)"))
    return items


def _models_table(res: Results) -> HtmlTable:
    mt = res.get("models")
    if mt is None:
        return HtmlTable([Column("models table absent")])
    cols = [c for c in ("model", "key", "cached", "resumed_from_epoch", "epochs", "train_seconds", "stopped_early",
                        "parameters", "source", "file", "sha256") if c in mt.columns]
    if "source" in cols and not mt["source"].astype(str).str.len().any():
        cols = [c for c in cols if c not in ("source", "file", "sha256")]  # nothing loaded: keep the table narrow
    return html_table(mt[cols], {"train_seconds": "sec", "key": "text", "sha256": "text", "file": "text", "source": "text"})


def _timings(res: Results) -> HtmlTable | None:
    t = res.run.get("timings")
    if not isinstance(t, Mapping) or not t:
        return None
    # a stage read back from the result cache took only the read: say so, not just "0.0 s"
    cached = set(res.run.get("cached_stages") or [])
    mt = res.get("models")
    trained = mt[mt["role"] != "loaded"] if mt is not None and "role" in mt.columns else None
    if trained is not None and len(trained) and "cached" in trained.columns and trained["cached"].astype(bool).all():
        cached.add("train")
    df = pd.DataFrame({"stage": list(t), "seconds": [float(v) for v in t.values()],
                       "how": ["cached (read from the store)" if k in cached else "" for k in t]})
    if not df["how"].astype(bool).any():
        df = df.drop(columns="how")
    return html_table(df, {"seconds": "sec"})


def _versions(res: Results) -> HtmlTable | None:
    v = res.environment.get("versions")
    if not isinstance(v, Mapping) or not v:
        return None
    return html_table(pd.DataFrame({"package": list(v), "version": [str(x) if x else "" for x in v.values()]}))


def _meta_line(res: Results) -> str:
    env = res.environment
    bits = [f"run {env.get('started_at', res.run.get('started_at', '(start not recorded)'))}",
            f"device {_device_text(env, res.run)}"]
    if env.get("git_commit"):
        bits.append(f"commit {str(env['git_commit'])[:12]}")
    st = res.study
    bits.append(f"seeds {', '.join(map(str, st.seeds))} (replicates)" if st.replicated else f"seed {st.seed}")
    return " · ".join(bits)


# --------------------------------------------------------------------------- the page


def _detail(res: Results, d: Any) -> dict[str, Any] | None:
    """A registered table of a section (:class:`workbench.views.Detail`), or None when absent."""
    df = res.get(d.table)
    if df is None:
        return None
    if d.rows is not None:
        df = resolve(d.rows)(res, df)
        if df is None or not len(df):
            return None
    if d.columns is not None:
        df = df[[c for c in d.columns if c in df.columns]]
    row_cls = None
    if d.row_class is not None:
        col, classes = d.row_class[0], dict(d.row_class[1])
        row_cls = [classes.get(str(v), "") for v in df[col]] if col in df.columns else None
    formats = dict(d.formats)
    if "*" in formats:  # one format for every column not named
        formats = {**{str(c): formats["*"] for c in df.columns}, **formats}
    return {"name": d.name, "summary": d.summary, "title": d.title, "open": d.open,
            "notes": list(resolve(d.notes)(res)) if d.notes is not None else [],
            "table": html_table(df, formats, row_cls=row_cls, id=d.id)}


def _section(res: Results, sec: ReportSection, entries: list[FigureEntry]) -> dict[str, Any] | None:
    """One registered section of the page (:class:`workbench.views.ReportSection`), or None when left out."""
    figs = [e for e in entries if e.section == sec.id]
    present = any(res.get(t) is not None for t in sec.tables)
    if sec.optional and not present and not figs:
        return None
    texts = list(resolve(sec.notes)(res)) if sec.notes is not None else []
    if sec.absent is not None and sec.tables and not present:
        texts.append(sec.absent)
    if sec.empty is not None and not figs:
        texts.append(sec.empty)
    tables = [t for t in (_detail(res, d) for d in details(sec.id)) if t is not None]
    return {"id": sec.id, "title": sec.title, "nav": sec.nav or sec.title, "notes": texts, "figures": figs,
            "text": sec.text if (present or not sec.tables) else None,
            "tables": [t for t in tables if t["open"]], "details": [t for t in tables if not t["open"]]}


def _study_yaml(res: Results) -> str:
    """study.yaml as written, re-dumped with Unicode kept (the runner's dump escapes ε as \\u03B5)."""
    try:
        text = (res.path / "study.yaml").read_text()
        return yaml.safe_dump(yaml.safe_load(text), sort_keys=False, allow_unicode=True, width=100)
    except (OSError, yaml.YAMLError):
        return res.study.to_yaml()


def _figure_inputs(res: Results) -> dict[str, Any]:
    """What the figures are drawn from: the run's table files and arrays (by sha256), the
    study, and the code that draws them."""
    def digests(folder: Path, pattern: str) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern)) if p.is_file()}

    tables = digests(res.path / "tables", "*.parquet")
    mt = res.get("models")
    if mt is not None and "models.parquet" in tables:
        # whether a model came from the store changes no figure (a rerun reuses them all)
        keep = mt.drop(columns=[c for c in ("cached", "resumed_from_epoch", "train_seconds") if c in mt.columns])
        tables["models.parquet"] = hashlib.sha256(keep.to_csv(index=False).encode()).hexdigest()
    return {
        "tables": tables,
        "arrays": digests(res.path / "arrays", "*"),
        "study": res.study.digest(),
        # the figures the components register (a new one is drawn), and the code drawing each
        "figures": [{**dataclasses.asdict(spec), "draw": _ref(spec.draw), "load": _ref(spec.load)} for spec in figures()],
        "code": code_hash(__name__, F.__name__, *sorted({_ref(f).partition(":")[0] for spec in figures()
                                                         for f in (spec.draw, spec.load) if f is not None})),
    }


def _ref(fn: Any) -> str | None:
    """``module:function`` of a figure's drawing (or loading) function."""
    return fn if fn is None or isinstance(fn, str) else f"{fn.__module__}:{fn.__qualname__}"


def cached_figures(res: Results, out_dir: Path, formats: Sequence[str]) -> tuple[list[FigureEntry], list[str]]:
    """:func:`draw_figures`, reused from the result cache of the run's store when the tables,
    arrays, study and figure code are those of an earlier report (a rerun with nothing
    changed then draws nothing). The page itself is always rendered anew: its provenance
    (times, reused stages) is this run's."""
    store = res.run.get("store")
    if not store:
        return draw_figures(res, out_dir, formats)

    def draw() -> StageOutput:
        entries, skipped = draw_figures(res, out_dir, formats)
        files = {f"{out_dir.name}/{p.name}": p.read_bytes() for p in sorted(out_dir.glob("*")) if p.is_file()}
        index = {"entries": [e.__dict__ for e in entries], "skipped": skipped}
        return StageOutput({}, {**files, "report/figures.json": json.dumps(index).encode()})

    got = cached_stage(ResultCache(store), "report", _figure_inputs(res), draw)
    if got.cached:
        kept = {Path(rel).name for rel in got.artifacts if rel.startswith(f"{out_dir.name}/")}
        if out_dir.is_dir():  # a stale figure from an earlier report would contradict this one, as when drawing
            for p in out_dir.glob("*"):
                if p.is_file() and p.name not in kept and p.suffix.lstrip(".") in formats:
                    p.unlink(missing_ok=True)
        for rel, blob in got.artifacts.items():
            if rel.startswith(f"{out_dir.name}/"):
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / Path(rel).name).write_bytes(blob)
    index = json.loads(got.artifacts["report/figures.json"])
    entries = [FigureEntry(**{**e, "files": [tuple(f) for f in e["files"]]}) for e in index["entries"]]
    return entries, list(index["skipped"])


def build_report(res: Results, *, out_dir: Path | None = None, published: Path | None = None) -> str:
    """The report page of ``res`` as a string; figure files go to ``out_dir`` when given."""
    summary = summary_table(res)
    if out_dir is not None:
        entries, skipped = cached_figures(res, out_dir, res.study.report.formats)
    else:
        entries, skipped = draw_figures(res, out_dir, res.study.report.formats)
    cell_cls = {label: [classes.get(str(v), "") for v in summary[label]]
                for label, classes in summary.attrs["classes"].items()}
    summary_html = html_table(summary, summary.attrs["formats"], cell_cls=cell_cls, id="summary-table")
    sections = [s for s in (_section(res, sec, entries) for sec in report_sections()) if s is not None]
    return render_page(
        "report.html.j2",
        summary_tables=[t for t in (_detail(res, d) for d in details("summary")) if t is not None],
        study=res.study,
        run_name=res.path.name,
        meta_line=_meta_line(res),
        summary=summary_html,
        summary_notes=_summary_notes(res),
        banners=[{"cls": cls, "text": text} for cls, text in _summary_notes(res, "banner")],
        sections=sections,
        provenance=_provenance(res, published),
        models_table=_models_table(res),
        timings=_timings(res),
        versions=_versions(res),
        study_yaml=_study_yaml(res),
        skipped=skipped,
    )


def write_report(run_dir: str | Path, *, published: str | Path | None = None) -> Path:
    """Write ``<run>/figures/*`` and ``<run>/index.html`` from the run's tables; returns the page.
    ``published``: where the run folder will be once published (``workbench run`` writes the
    report into its staging folder); the provenance names it."""
    res = load(run_dir)
    page = build_report(res, out_dir=res.path / "figures", published=Path(published) if published else None)
    out = res.path / "index.html"
    write_page(out, page)
    return out


def write_page(path: Path, text: str) -> None:
    """Write through a temporary file and ``os.replace``: a reader never sees half a page,
    and the file gets the user's umask (a report is meant to be shared)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def now_text() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
