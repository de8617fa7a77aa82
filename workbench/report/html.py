"""The self-contained HTML report of one run: ``write_report(run_dir) -> <run>/index.html``.

The page opens with a summary (one row per model: clean and robust accuracy, Lipschitz
ratio, soundness verdict), then every figure with one sentence on how to read it, the
soundness checks and the provenance of the run. Figures are embedded as base64 PNG data
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
import logging
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import components  # noqa: F401  (registers every component's figures)
from ..errors import RunFolderError
from ..results import Results, load
from ..views import FigureSpec, figures, measures, resolve
from . import figures as F

log = logging.getLogger("workbench")

SECTIONS = (("robustness", "Robustness"), ("representations", "Representations"),
            ("encode", "What the representations encode"))


# --------------------------------------------------------------------------- templates


@lru_cache(maxsize=1)
def _env():
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
    from markupsafe import Markup

    script, digest = _script()
    return _env().get_template(template).render(
        script=Markup(script), script_hash=digest, version=_version(), **context  # our own constant, not user text
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

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

VERDICT_OK = "sound"
VERDICT_WARN = "robustness may be overestimated"
WORST = "worst_case"


def robust_eps(rob: pd.DataFrame, attack: str, main_eps: float, norm: str | None = None) -> float | None:
    """The ε at which the summary reports ``attack``: for L∞, the evaluated ε closest to the
    main ε; for L2, the middle of the attack's own grid (an L∞ radius means nothing in L2).
    ``norm`` picks one norm of an attack that has several (the worst case)."""
    d = rob[(rob["attack"] == attack) & (rob["eps"] > 0)]
    if norm is not None:
        d = d[d["norm"] == norm]
    if d.empty:
        return None
    if (d["norm"] == "linf").all():
        return F.closest(d["eps"], main_eps)
    return F.middle(d["eps"])


def penultimate_layers(lip: pd.DataFrame) -> dict[str, tuple[str, int]]:
    """model -> (layer, index) of the deepest measured layer other than the logits (the
    penultimate layer when the probe covered all layers)."""
    out = {}
    for m, d in lip[lip["layer"] != "logits"].groupby("model", sort=False):
        row = d.sort_values("layer_index").iloc[-1]
        out[str(m)] = (str(row["layer"]), int(row["layer_index"]))
    return out


def soundness_verdicts(snd: pd.DataFrame | None) -> dict[str, str]:
    """model -> ``sound`` or ``robustness may be overestimated`` (any check at ``warn``)."""
    if snd is None:
        return {}
    return {str(m): VERDICT_WARN if (d["status"] == "warn").any() else VERDICT_OK for m, d in snd.groupby("model", sort=False)}


def summary_table(res: Results) -> pd.DataFrame:
    """One row per model: training, clean accuracy, robust accuracy per attack at the main ε,
    Lipschitz ratio at the penultimate layer, soundness verdict. Accuracies are fractions;
    column labels carry the ε used; ``df.attrs`` holds the formats and notes the report shows."""
    rob = res.get("robustness")
    if rob is None:
        raise RunFolderError("table robustness is missing or empty", file=str(res.path / "tables" / "robustness.parquet"))
    main_eps = res.study.main_eps()
    models = F.model_order(res.tables)
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
                training += f" ({F.NORM_LABEL.get(str(r['train_norm']), r['train_norm'])} ε={F.eps_label(float(r['train_eps']))})"
            if isinstance(r["stopped_early"], str) and r["stopped_early"]:
                training += f"; stopped early: {r['stopped_early']}"
        rows[m]["training"] = training

    def interval_text(d: pd.DataFrame, m: str) -> str:
        hit = d[d["model"] == m]
        if hit.empty or "ci_low" not in hit.columns:
            return ""
        return f"[{100 * float(hit['ci_low'].iloc[0]):.1f}, {100 * float(hit['ci_high'].iloc[0]):.1f}]"

    clean_rows = rob[rob["attack"] == "clean"]
    clean = clean_rows.groupby("model")["accuracy"].first()
    formats["clean accuracy (%)"] = "pct"
    formats["clean 95% CI"] = "text"
    for m in models:
        rows[m]["clean accuracy (%)"] = clean.get(m, np.nan)
        rows[m]["clean 95% CI"] = interval_text(clean_rows, m)

    # the headline: per-example worst case over every white-box attack, one column per norm
    for norm in [n for n in ("linf", "l2", "l1", "spatial") if ((rob["attack"] == WORST) & (rob["norm"] == n)).any()]:
        eps = robust_eps(rob, WORST, main_eps, norm)
        d = rob[(rob["attack"] == WORST) & (rob["norm"] == norm) & np.isclose(rob["eps"], eps)]
        label = f"worst case (%) {F.NORM_LABEL.get(norm, norm)} ε={F.eps_label(eps)}"
        formats[label] = "pct"
        formats[f"{label} 95% CI"] = "text"
        acc = d.groupby("model")["accuracy"].first()
        for m in models:
            rows[m][label] = acc.get(m, np.nan)
            rows[m][f"{label} 95% CI"] = interval_text(d, m)

    for attack in rob.loc[~rob["attack"].isin(["clean", WORST]), "attack"].drop_duplicates():
        eps = robust_eps(rob, attack, main_eps)
        if eps is None:
            continue
        d = rob[(rob["attack"] == attack) & np.isclose(rob["eps"], eps)]
        norm = str(d["norm"].iloc[0])
        label = f"{attack} (%) {F.NORM_LABEL.get(norm, norm)} ε={F.eps_label(eps)}"
        formats[label] = "pct"
        acc = d.groupby("model")["accuracy"].first()
        for m in models:
            rows[m][label] = acc.get(m, np.nan)

    # the columns the components register (workbench.views: the Lipschitz ratio, the soundness verdict, ...)
    columns: dict[str, str] = {}
    for measure in measures(summary=True):
        label, values = resolve(measure.compute)(res)
        columns[measure.name] = label
        formats[label] = measure.format
        for m in models:
            rows[m][label] = values.get(m, "" if measure.format == "text" else np.nan)

    df = pd.DataFrame(list(rows.values()))
    df.attrs["formats"] = formats
    df.attrs["columns"] = columns
    df.attrs["main_eps"] = main_eps
    return df


def lipschitz_summary(res: Results) -> tuple[str, dict[str, float]]:
    """The summary column of the lipschitz probe: D at the penultimate layer (δ_loss, L∞, at the
    grid ε closest to the main ε), with the label naming the layer and ε."""
    lip = res.get("lipschitz")
    label = "Lipschitz D, penultimate layer (δ_loss, L∞)"
    values: dict[str, float] = {}
    if lip is not None:
        eps = F.lipschitz_eps(lip, "linf", res.study.main_eps())
        if eps is not None:
            d = lip[(lip["norm"] == "linf") & (lip["kind"] == "loss") & np.isclose(lip["eps"], eps)]
            layers = penultimate_layers(d)
            names = sorted({layer for layer, _ in layers.values()})
            label = f"Lipschitz D at {', '.join(names) or 'penultimate layer'} (δ_loss, L∞ ε={F.eps_label(eps)})"
            for m, (layer, _) in layers.items():
                values[m] = float(d.loc[(d["model"] == m) & (d["layer"] == layer), "mean"].iloc[0])
    return label, values


def soundness_summary(res: Results) -> tuple[str, dict[str, str]]:
    """The summary column of the soundness checks: each model's verdict."""
    return "soundness", soundness_verdicts(res.get("soundness"))


def _cascade_note(res: Results) -> str:
    """What the worst case's APGD cascade did, or that it is missing (never silently absent)."""
    cas = res.get("worst_case_cascade")
    if cas is None:
        return ("APGD: the worst case has no APGD cascade in this run (evaluation.worst_case.apgd: false, or a run "
                "older than it): it may overstate robustness, most of all at L2.")
    from ..evaluation.worst_case import MISSING

    if (cas["status"] == MISSING).any():
        return ("APGD: the pyautoattack package is missing, so the worst case holds no APGD-CE or APGD-T "
                "(pip install pyautoattack); it may overstate robustness, most of all at L2.")
    ran = cas[cas["status"] == "ran"]
    broke = ", ".join(f"{a} {int(d['broken'].sum())}" for a, d in ran.groupby("attack", sort=False))
    other = cas[cas["status"] != "ran"]
    skipped = f" Not run: {'; '.join(sorted(set(other['status'])))}." if len(other) else ""
    return ("APGD cascade (AutoAttack's code): at every norm and ε, APGD-CE attacked the examples every evaluation "
            "attack left robust, then APGD-T those APGD-CE left; examples they broke, summed over models, norms and "
            f"ε: {broke or 'none'} (table worst_case_cascade).{skipped}")


def _summary_notes(res: Results) -> list[str]:
    rob = res["robustness"]
    n = sorted({int(v) for v in rob["n"]})
    main_eps = res.study.main_eps()
    notes = [
        f"Accuracies are percentages of {' / '.join(map(str, n))} evaluated test examples; the bracketed ranges are "
        "95% Wilson intervals (the robustness table has them for every attack: ci_low, ci_high).",
        "Worst case: an example counts as robust only if it is classified correctly clean and under every white-box "
        "attack run on it at that norm and ε, the soundness checks' attacks and the APGD cascade included; it is at or "
        "below every single "
        "attack's accuracy.",
        f"Robust accuracy is white-box accuracy at the main ε = {F.eps_label(main_eps)} (evaluation.main_eps, else the "
        "training ε of the first L∞-adversarial recipe). An L∞ attack not evaluated at that ε shows its evaluated ε "
        "closest to it; an L2 attack shows the middle value of its own ε grid, since an L∞ radius has no meaning in L2. "
        "Each column header gives the ε used.",
    ]
    notes.append(_cascade_note(res))
    if res.get("lipschitz") is None:
        notes.append("Lipschitz ratio: the lipschitz probe was not run for this study.")
    else:
        notes.append(
            "Lipschitz D = ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖∞ at the deepest measured layer before the logits (the penultimate "
            "layer when the probe covers all layers), δ from PGD on the cross-entropy; lower means a more stable "
            "representation.")
    sig = res.get("significance")
    if sig is not None and len(sig):
        from ..significance import describe

        notes.append("Paired tests (exact McNemar on per-example correctness for accuracies, sign-flip permutation test for the "
                     "representation measures (penultimate-layer Lipschitz ratio, γ, gradient alignment, saliency metrics); "
                     "Holm-corrected across the run's comparisons): " + " ".join(describe(sig)))
    if res.get("soundness") is None:
        notes.append("Soundness: the checks were not run (evaluation.soundness.enabled: false).")
    else:
        notes.append(f"Soundness: “{VERDICT_WARN}” when any check of that model warns (see Soundness below).")
    return notes


def _replicates_notes(res: Results) -> list[str]:
    seeds = ", ".join(map(str, res.study.seeds))
    return [
        f"Every model was trained once per seed ({seeds}): the models of one seed share initial weights and data order, "
        "and pairs (and their paired tests) stay within a seed. The data split and the evaluation and probe examples "
        f"are those of the first seed ({res.study.seed}), the same for every replicate.",
        "mean ± sd: the mean over the seeds and the sample standard deviation (n − 1) across them: how much the measure "
        "moves when only the seed changes. The bracket after each seed's value is that model's 95% interval over test "
        "examples (Wilson for accuracies, bootstrap otherwise): how much it would move on other examples. An sd much "
        "smaller than the intervals says the examples, not the training seed, dominate the uncertainty. Table "
        "replicates has every measure at every ε.",
    ]


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


def load_saliency_arrays(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The saliency maps through ``workbench.probes.saliency.load_saliency`` (imported lazily:
    it pulls in torch and captum), or None and the reason they are unavailable."""
    if not (run_dir / "arrays" / "saliency.npz").is_file():
        return None, "the saliency probe was not run (no arrays/saliency.npz)"
    try:
        from ..probes.saliency import load_saliency
    except ImportError as e:
        return None, f"workbench.probes.saliency.load_saliency is unavailable ({e})"
    try:
        return load_saliency(run_dir), ""
    except Exception as e:  # noqa: BLE001 - a bad array file loses one figure, not the report
        log.warning("saliency maps unreadable: %s", e)
        return None, f"arrays/saliency.npz could not be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def saliency_figure(tables: Mapping[str, pd.DataFrame], *, run_dir: Path, **_: Any) -> tuple[Any, str]:
    """The saliency maps of a run (figure or None, why it is None): drawn from its arrays."""
    arrays, why = load_saliency_arrays(run_dir)
    if arrays is None:
        return None, why
    return F.saliency_grid(arrays, tables), "no maps in arrays/saliency.npz"


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


def _soundness_section(res: Results, entries: list[FigureEntry]) -> dict[str, Any] | None:
    snd = res.get("soundness")
    if snd is None:
        return None
    order = {m: i for i, m in enumerate(F.model_order(res.tables))}
    snd = snd.assign(_o=snd["model"].map(lambda m: order.get(m, 99))).sort_values("_o", kind="stable").drop(columns="_o")
    cols = [c for c in ["model", "check", "status", "value", "threshold", "p_value", "detail"] if c in snd.columns]
    table = html_table(snd[cols], {"detail": "text", "check": "text"},
                       row_cls=["warn" if s == "warn" else "" for s in snd["status"]], id="soundness-table")
    return {"figures": [e for e in entries if e.section == "soundness"], "table": table}


def _verdict_banner(res: Results) -> dict[str, str] | None:
    snd = res.get("soundness")
    if snd is None:
        return None
    warn = snd[snd["status"] == "warn"]
    if warn.empty:
        return {"cls": "ok", "text": "Every soundness check passes for every model."}
    parts = [f"{m} ({', '.join(map(str, d['check']))})" for m, d in warn.groupby("model", sort=False)]
    return {"cls": "warn", "text": "Robust accuracy may be overestimated for: " + "; ".join(parts) + "."}


def _details(res: Results) -> list[dict[str, Any]]:
    out = []
    rob = res.get("robustness")
    if rob is not None:
        cols = ["model", "attack", "norm", "loss", "steps", "restarts", "eps", "n", "accuracy", "ci_low", "ci_high",
                "adv_risk", "seconds"]
        cols = [c for c in cols if c in rob.columns]
        out.append({"summary": "All white-box numbers (robustness table; ci: 95% Wilson interval)",
                    "table": html_table(rob[cols], {"accuracy": "num", "ci_low": "num", "ci_high": "num", "adv_risk": "num",
                                                    "eps": "num", "seconds": "sec"})})
    sig = res.get("significance")
    if sig is not None and len(sig):
        out.append({"summary": "Paired tests between the models of each pair (significance table; Holm-corrected)",
                    "table": html_table(sig, {"eps": "num", "reference_value": "num", "model_value": "num",
                                              "difference": "num", "ci_low": "num", "ci_high": "num",
                                              "p_value": "num", "p_holm": "num"})})
    tr = res.get("transfer")
    if tr is not None:
        cols = ["source", "target", "attack", "eps", "n", "accuracy", "adv_risk"]
        out.append({"summary": "Transfer between the models of each pair (transfer table)",
                    "table": html_table(tr[cols], {"accuracy": "num", "adv_risk": "num", "eps": "num"})})
    return out


def _encode_details(res: Results) -> list[dict[str, Any]]:
    out = []
    nums = {"value": "num", "ci_low": "num", "ci_high": "num"}
    s = res.get("represent")
    if s is not None and len(s):
        out.append({"summary": "Measures per model with 95% intervals (represent table)", "table": html_table(s, nums)})
    t = res.get("represent_tests")
    if t is not None and len(t):
        out.append({"summary": "Paired tests between the models of each pair on the same items (represent_tests; Holm-corrected)",
                    "table": html_table(t, {**nums, "reference_value": "num", "model_value": "num", "difference": "num",
                                            "p_value": "num", "p_holm": "num"})})
    j = res.get("represent_judge")
    if j is not None and len(j):
        out.append({"summary": "The judge (represent_judge)", "table": html_table(j, {"train_accuracy": "num",
                                                                                       "test_accuracy": "num"})})
    return out


def _encode_notes(res: Results) -> list[str]:
    j = res.get("represent_judge")
    notes = ["These measures are the workbench's own: the papers show the images (Engstrom et al. 2019, Santurkar "
             "et al. 2019, Tsipras et al. 2019) and give no number to compare with (docs/methods.md)."]
    if j is not None and len(j):
        r = j.iloc[0]
        notes.append(f"Judge: {r['judge']}, never attacked; {100 * float(r['test_accuracy']):.1f}% accurate on the "
                     f"{int(r['test_examples'])} test images.")
    return notes


def _study_yaml(res: Results) -> str:
    """study.yaml as written, re-dumped with Unicode kept (the runner's dump escapes ε as \\u03B5)."""
    import yaml

    try:
        text = (res.path / "study.yaml").read_text()
        return yaml.safe_dump(yaml.safe_load(text), sort_keys=False, allow_unicode=True, width=100)
    except (OSError, yaml.YAMLError):
        return res.study.to_yaml()


def _figure_inputs(res: Results) -> dict[str, Any]:
    """What the figures are drawn from: the run's table files and arrays (by sha256), the
    study, and the code that draws them."""
    from ..codehash import code_hash

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
    import json

    from ..cache import ResultCache, cached_stage
    from ..stages import StageOutput

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
    verdict_cls = ["verdict-warn" if v == VERDICT_WARN else ("verdict-ok" if v == VERDICT_OK else "")
                   for v in summary["soundness"]]
    summary_html = html_table(summary, summary.attrs["formats"], cell_cls={"soundness": verdict_cls}, id="summary-table")
    sections = []
    for sid, title in SECTIONS:
        figs = [e for e in entries if e.section == sid]
        notes = []
        if sid == "representations" and not figs:
            notes.append("No representation probes were run for this study (its probes section enables none).")
        if sid == "encode":
            if res.get("represent") is None:
                if not figs:
                    continue  # neither the represent probe nor a derived-set model: no section
            else:
                notes += _encode_notes(res)
        details = _details(res) if sid == "robustness" else (_encode_details(res) if sid == "encode" else [])
        sections.append({"id": sid, "title": title, "figures": figs, "notes": notes, "details": details})
    study_yaml = _study_yaml(res)
    from ..replicates import replicate_summary

    reps = replicate_summary(res.get("replicates"), res.study.main_eps())
    return render_page(
        "report.html.j2",
        replicates=html_table(reps, {c: "text" for c in reps.columns}, id="replicates-table") if len(reps) else None,
        replicates_notes=_replicates_notes(res) if len(reps) else [],
        study=res.study,
        run_name=res.path.name,
        meta_line=_meta_line(res),
        summary=summary_html,
        summary_notes=_summary_notes(res),
        verdict_banner=_verdict_banner(res),
        sections=sections,
        soundness=_soundness_section(res, entries),
        provenance=_provenance(res, published),
        models_table=_models_table(res),
        timings=_timings(res),
        versions=_versions(res),
        study_yaml=study_yaml,
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
