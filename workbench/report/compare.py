"""Several runs side by side: ``write_comparison(run_dirs, out) -> <out>/index.html``.

Every run is loaded with :func:`workbench.results.load` (a missing or malformed folder raises
:class:`~workbench.errors.RunFolderError`). Their tables are joined with a leading ``run``
column (the folder name; parent folders are prepended, then ``-2``, ``-3`` suffixes, until
names are unique) and written to ``<out>/tables/``. The page shows:

* accuracy against ε of every model of every run, one panel per attack (colour: model,
  line style: run);
* per-layer Lipschitz profiles (δ_loss, L∞ at each run's main ε) of every model of every
  run that ran the probe;
* a table of differences: for every run, model and attack (plus clean), the accuracy at
  that run's main ε (the summary's rule: closest evaluated L∞ ε, middle of an L2 grid), and
  its difference in percentage points to the **first run given that has the same model id
  and evaluated the same attack at the same ε** (blank when there is none, and for that
  first run itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import RunFolderError, WorkbenchError
from ..results import Results, load
from ..store import ComparisonFolder, now
from . import figures as F
from ..present import robust_eps
from .cross_model import compare_measures, correlations, cross_model_table, measure_scatter, replicate_rows, replicated, threat_correlations, threats
from .html import FigureEntry, data_uri, html_table, now_text, png_size, render_page, write_page
from ..display import comparison_repr, comparison_html
from ..significance import describe
from ..replicates import mean_sd_text

_RUN_STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3))]


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, made unique: where different folders share a name, just enough parent
    folders are prepended to tell them apart; the same folder given twice is numbered."""
    resolved = [p.resolve() for p in paths]
    names = [p.name for p in resolved]
    for name in set(names):
        group = sorted({p for p in resolved if p.name == name})
        if len(group) < 2:
            continue
        depth = 2
        while depth < max(len(p.parts) for p in group) and len({p.parts[-depth:] for p in group}) < len(group):
            depth += 1
        names = ["/".join(p.parts[-depth:]) if p in group else n for p, n in zip(resolved, names)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def join_tables(runs: Sequence[Results], names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Every table of every run, concatenated with a leading ``run`` column."""
    out: dict[str, pd.DataFrame] = {}
    for table in sorted({t for r in runs for t in r.tables}):
        parts = [r.tables[table].assign(run=n) for r, n in zip(runs, names) if r.get(table) is not None]
        if parts:
            df = pd.concat(parts, ignore_index=True)
            out[table] = df[["run", *[c for c in df.columns if c != "run"]]]
    return out


def _check_out(out: Path, paths: Sequence[Path]) -> None:
    if out.exists() and not out.is_dir():
        raise RunFolderError("comparison output exists and is not a folder", file=str(out))
    target = out.resolve()
    for p in paths:
        if p.exists() and p.resolve() == target:
            raise RunFolderError("refusing to write a comparison into one of the compared run folders", file=str(out))
    if (out / "study.yaml").exists():
        raise RunFolderError("refusing to write a comparison into a run folder (it holds study.yaml)", file=str(out))


# --------------------------------------------------------------------------- figures


def _styles(names: Sequence[str]) -> dict[str, Any]:
    return {n: _RUN_STYLES[i % len(_RUN_STYLES)] for i, n in enumerate(names)}


def _all_models(runs: Sequence[Results]) -> list[str]:
    return list(dict.fromkeys(m for r in runs for m in F.model_order(r.tables)))


def _plain(text: str) -> str:
    """Folder names as literal text: matplotlib reads ``$...$`` as math (``a$^$b`` is a parse error)."""
    return text.replace("$", r"\$")


def _run_handles(names: Sequence[str], styles: dict[str, Any]) -> list[Line2D]:
    return [Line2D([], [], color="0.3", ls=styles[n], label=f"run {_plain(n)}") for n in names]


def accuracy_vs_eps(runs: Sequence[Results], names: Sequence[str]) -> Figure | None:
    """Accuracy against ε for every model of every run; one panel per attack."""
    robs = [(n, r.get("robustness")) for r, n in zip(runs, names)]
    robs = [(n, d) for n, d in robs if d is not None]
    if not robs:
        return None
    attacks = pd.concat([d[d["attack"] != "clean"] for _, d in robs]).drop_duplicates(["attack", "norm"])
    if attacks.empty:
        return None
    models = _all_models(runs)
    colours = F.palette(models)
    styles = _styles(names)
    with F.theme():
        fig, axes = F.new_figure(len(attacks), extra_w=2.6, sharey=True)
        for c, (_, att) in enumerate(attacks.iterrows()):
            ax = axes[0, c]
            for n, rob in robs:
                clean = rob[rob["attack"] == "clean"].groupby("model")["accuracy"].first()
                for m, d in rob[(rob["attack"] == att["attack"]) & (rob["norm"] == att["norm"])].groupby("model", sort=False):
                    d = d.sort_values("eps")
                    x, y = d["eps"].to_numpy(), d["accuracy"].to_numpy()
                    if m in clean:
                        x, y = np.r_[0.0, x], np.r_[clean[m], y]
                    ax.plot(x, y, ls=styles[n], marker="o", ms=3, color=colours[m])
            norm = F.NORM_LABEL.get(att["norm"], att["norm"])
            ax.set(title=f"{att['attack']} ({norm}, {att['loss']})", xlabel=f"ε ({norm})", ylim=(-0.02, 1.02))
        axes[0, 0].set_ylabel("accuracy")
        F.legend(fig, F.model_handles(models, colours) + _run_handles([n for n, _ in robs], styles))
    return fig


def lipschitz_profiles(runs: Sequence[Results], names: Sequence[str]) -> Figure | None:
    """D per layer (δ_loss, L∞ at each run's main ε) and relative change, every model of every run."""
    present = [(n, r, r.get("lipschitz")) for r, n in zip(runs, names)]
    present = [(n, r, d[(d["norm"] == "linf") & (d["kind"] == "loss")]) for n, r, d in present if d is not None]
    present = [(n, r, d) for n, r, d in present if len(d)]
    if not present:
        return None
    models = _all_models(runs)
    colours = F.palette(models)
    styles = _styles(names)
    with F.theme():
        fig, axes = F.new_figure(2, w=4.2, extra_w=2.6)
        eps_used = []
        for n, r, d in present:
            eps = F.lipschitz_eps(d, "linf", r.study.main_eps())
            eps_used.append(f"{_plain(n)}: ε={F.eps_label(eps)}")
            d = d[np.isclose(d["eps"], eps)]
            for m, dm in d.groupby("model", sort=False):
                dm = dm.sort_values("layer_index")
                axes[0, 0].plot(dm["layer_index"], dm["mean"], ls=styles[n], marker="o", ms=3, color=colours[m])
                axes[0, 1].plot(dm["layer_index"], dm["rel_mean"], ls=styles[n], marker="o", ms=3, color=colours[m])
        both = pd.concat([d for _, _, d in present])
        for ax, ylabel in ((axes[0, 0], "D = ‖Δφ‖₂ / ‖δ‖∞"), (axes[0, 1], "relative change ‖Δφ‖ / ‖φ‖")):
            F.log_axis(ax)
            ax.set_ylabel(ylabel)
            F.layer_ticks(ax, both)
        axes[0, 0].set_title("ratio D, δ_loss, L∞ (" + "; ".join(eps_used) + ")", fontsize="small")
        axes[0, 1].set_title("relative change", fontsize="small")
        F.legend(fig, F.model_handles(models, colours) + _run_handles([n for n, _, _ in present], styles))
    return fig


def _measure_scatter(runs, names):
    return measure_scatter(runs, names)


COMPARE_FIGURES = (
    ("accuracy_vs_eps", "Accuracy against ε, every run", accuracy_vs_eps,
     "Each panel is one attack; colours are models and line styles runs (ε = 0 is clean accuracy), so curves of "
     "one colour show how the same model fares from run to run."),
    ("lipschitz_profiles", "Lipschitz profiles, every run", lipschitz_profiles,
     "Feature-space Lipschitz ratio D per layer (left, log scale) and relative change (right) under PGD on the "
     "cross-entropy (L∞, each run's main ε), colours models and line styles runs: lower is a more stable representation."),
    ("measure_scatter", "Representation measures against worst-case robust accuracy", _measure_scatter,
     "One point per model of every run (colour: model, marker: run), worst-case robust accuracy (L∞, each run's main ε) "
     "with its 95% Wilson interval against each measure; the title gives Spearman's ρ across the models with its "
     "Fisher-z interval. Few models make a wide interval: ρ is a description, not evidence, below about ten."),
)


# --------------------------------------------------------------------------- differences


def differences(runs: Sequence[Results], names: Sequence[str]) -> pd.DataFrame:
    """Long table: run × model × attack (clean first) with the accuracy at the run's main ε and
    the difference (percentage points) to the first run with that model, attack and ε."""
    rows = []
    for r, n in zip(runs, names):
        rob = r.get("robustness")
        if rob is None:
            continue
        main_eps = r.study.main_eps()
        for m in F.model_order(r.tables):
            dm = rob[rob["model"] == m]
            if dm.empty:
                continue
            for attack, norm in dm[["attack", "norm"]].drop_duplicates().itertuples(index=False):
                eps = 0.0 if attack == "clean" else robust_eps(rob, attack, main_eps, norm)
                if eps is None:
                    continue
                d = dm[(dm["attack"] == attack) & (dm["norm"] == norm) & np.isclose(dm["eps"], eps)]
                if d.empty:
                    continue
                rows.append({"run": n, "model": m, "attack": attack, "norm": str(d["norm"].iloc[0]), "eps": eps,
                             "accuracy": float(d["accuracy"].iloc[0])})
    df = pd.DataFrame(rows, columns=["run", "model", "attack", "norm", "eps", "accuracy"])
    order = list(names)
    ref_run, delta = [], []
    for _, row in df.iterrows():
        found = None
        for r, n in zip(runs[: order.index(row["run"])], order):  # runs given before this one, in order
            rob = r.get("robustness")
            if rob is None:
                continue
            hit = rob[(rob["model"] == row["model"]) & (rob["attack"] == row["attack"]) & (rob["norm"] == row["norm"])
                      & np.isclose(rob["eps"], row["eps"])]
            if len(hit):
                found = (n, float(hit["accuracy"].iloc[0]))
                break
        ref_run.append(found[0] if found else "")
        delta.append(100 * (row["accuracy"] - found[1]) if found else np.nan)
    df["compared with"] = ref_run
    df["Δ accuracy (points)"] = delta
    return df


# --------------------------------------------------------------------------- entry point


def _short_commit(commit: object) -> str:
    """``abcdef123456`` (+ ``+dirty``): enough to find the commit, short enough for a table."""
    if not commit:
        return ""
    text = str(commit)
    return text[:12] + ("+dirty" if text.endswith("+dirty") else "")



@dataclass(repr=False)
class Comparison:
    """What ``workbench compare`` shows, as tables (for a notebook: :func:`compare_runs`).

    ``cross``: every model of every run (one row per run × model, replicates included, with
    architecture, recipe and seed); ``replicates``: mean ± sd across seeds per run ×
    architecture × recipe trained with several seeds; ``correlations``: Spearman's ρ of each
    representation measure with worst-case accuracy across all models of ``cross``;
    ``significance``: every run's paired tests (within a seed; Holm within its run) with a
    leading ``run`` column; ``differences``: accuracy differences between runs."""

    runs: list[Results]
    names: list[str]
    cross: pd.DataFrame
    replicates: pd.DataFrame
    correlations: pd.DataFrame
    significance: pd.DataFrame
    differences: pd.DataFrame
    #: Spearman's ρ across models of the L∞ worst case with each other threat model's accuracy
    threat_correlations: pd.DataFrame = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return comparison_repr(self.names, self.cross)

    def _repr_html_(self) -> str:
        return comparison_html(self.names, self.cross, self.differences, self.significant())

    def scatter(self) -> Figure | None:
        """Each representation measure against worst-case accuracy, one point per model."""
        return _measure_scatter(self.runs, self.names)

    def significant(self) -> list[str]:
        """Sentences naming the significant differences of every run (and how many are not)."""
        out = []
        for r, n in zip(self.runs, self.names):
            sig = r.get("significance")
            if sig is not None:
                out += [f"{n}: {t}" for t in describe(sig)]
        return out


def compare_runs(runs: Sequence[str | Path | Results], names: Sequence[str] | None = None) -> Comparison:
    """The comparison's tables of run folders (or loaded :class:`Results`): the library
    function behind ``workbench compare`` (which draws its figures from the same tables)."""
    _check_distinct([Path(r.path if isinstance(r, Results) else r) for r in runs])
    loaded = [r if isinstance(r, Results) else load(r) for r in runs]
    names = list(names) if names is not None else run_names([r.path for r in loaded])
    cross = cross_model_table(loaded, names)
    sigs = [r.tables["significance"].assign(run=n) for r, n in zip(loaded, names) if r.get("significance") is not None]
    sig = pd.concat(sigs, ignore_index=True) if sigs else pd.DataFrame(columns=["run"])
    sig = sig[["run", *[c for c in sig.columns if c != "run"]]]
    return Comparison(loaded, names, cross, replicate_rows(cross), correlations(cross) if len(cross) else pd.DataFrame(),
                      sig, differences(loaded, names),
                      threat_correlations(cross) if len(cross) else pd.DataFrame(columns=["threat", "n", "rho", "ci_low",
                                                                                           "ci_high"]))


def _headline_significance(c: Comparison) -> pd.DataFrame:
    """The paired tests the page shows: clean and the worst case at each run's summary ε per norm,
    and every representation measure (the joined table has them all)."""
    parts = []
    for r, n in zip(c.runs, c.names):
        sig, rob = r.get("significance"), r.get("robustness")
        if sig is None:
            continue
        keep = ~sig["measure"].isin(["worst_case"])
        for norm in sig.loc[sig["measure"] == "worst_case", "norm"].drop_duplicates():
            eps = robust_eps(rob, "worst_case", r.study.main_eps(), norm) if rob is not None else None
            if eps is not None:
                keep |= (sig["measure"] == "worst_case") & (sig["norm"] == norm) & np.isclose(sig["eps"], eps)
        parts.append(sig[keep].assign(run=n))
    cols = ["run", "reference", "model", "measure", "norm", "eps", "difference", "ci_low", "ci_high", "p_holm",
            "significant"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def _check_distinct(paths: Sequence[Path]) -> None:
    """A run given twice (under any spelling of its path) would be compared with itself."""
    seen: dict[Path, Path] = {}
    for p in paths:
        real = p.expanduser().resolve()
        if real in seen:
            raise WorkbenchError(f"{p} is the same run folder as {seen[real]}: give each run once", field="run_dirs")
        seen[real] = p


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path, *, keep: int | None = None) -> Path:
    """Compare runs: joined tables in ``<out>/tables``, figures in ``<out>/figures``, the page at
    ``<out>/index.html``. ``out`` follows the rules of a run folder (:class:`ComparisonFolder`):
    written in a staging folder and published whole, the previous comparison archived (the
    last ``keep``); a folder holding anything but a comparison, or a run folder, is refused
    (:class:`RunFolderError`)."""
    paths = [Path(p) for p in run_dirs]
    out = Path(out)
    if len(paths) < 2:
        raise WorkbenchError(f"compare needs at least two run folders, got {len(paths)}", field="run_dirs")
    _check_distinct(paths)
    _check_out(out, paths)
    folder = ComparisonFolder(out, keep=keep)
    folder.check()  # refuse a folder that is not a comparison before any work
    runs = [load(p) for p in paths]
    names = run_names(paths)
    joined = join_tables(runs, names)
    comp = compare_runs(runs, names)

    with folder.staged():
        _write_comparison(folder, runs, names, joined, comp, out)
        folder.write_json("comparison.json", {"runs": [str(p.resolve()) for p in paths], "written_at": now()})
        folder.publish()
    return out / "index.html"


def _write_comparison(folder: ComparisonFolder, runs, names, joined, comp, out: Path) -> None:
    for name, df in joined.items():
        folder.write_table(name, df)

    formats = runs[0].study.report.formats
    entries, skipped = [], []
    for stem, title, draw, caption in COMPARE_FIGURES:
        fig = draw(runs, names)
        if fig is None:
            skipped.append(f"{title}: no run has the table it needs.")
            for fmt in ("png", "svg"):
                (folder.figures / f"{stem}.{fmt}").unlink(missing_ok=True)
            continue
        png, files = F.render(fig, stem, folder.figures, formats)
        w, h = png_size(png)
        entries.append(FigureEntry(stem, title, caption, "compare", data_uri(png), w, h,
                                   [(fmt, f"figures/{p.name}") for fmt, p in files.items()]))

    cross, corr, diff = comp.cross, comp.correlations, comp.differences
    folder.write_table("cross_model", cross)
    folder.write_table("cross_model_replicates", comp.replicates)
    folder.write_table("threat_correlations", comp.threat_correlations)
    rep_view = pd.DataFrame()
    if len(comp.replicates):
        rep_view = comp.replicates[["run", "model", "n_seeds"]].copy()
        labels = compare_measures()
        for col in replicated():
            label = f"{col} (%)" if col in ("clean", "worst case", "autoattack") else labels.get(col, col)
            rep_view[label] = [
                mean_sd_text(r[f"{col} mean"], r[f"{col} sd"], int(r["n_seeds"]), percent=col in ("clean", "worst case",
                                                                                                     "autoattack"))
                for _, r in comp.replicates.iterrows()]
        rep_view = rep_view[[c for c in rep_view.columns if c in ("run", "model", "n_seeds") or rep_view[c].str.len().any()]]
    sig_view = _headline_significance(comp)
    runs_df = pd.DataFrame([
        {"run": n, "folder": str(r.path.resolve()), "study": r.study.name,
         "main ε": F.eps_label(r.study.main_eps()), "models": ", ".join(F.model_order(r.tables)),
         "started": str(r.environment.get("started_at", "")), "git commit": _short_commit(r.environment.get("git_commit")),
         "seed": ", ".join(map(str, r.study.seeds))}
        for r, n in zip(runs, names)
    ])
    notes = [
        "Accuracy at each run's main ε (closest evaluated ε for L∞ attacks, the middle of the grid for L2 attacks); "
        "clean rows have ε = 0.",
        "Δ is this run's accuracy minus that of the first run given (command-line order) with the same model id, "
        "attack and ε, in percentage points; blank for that first run and where no earlier run matches.",
        f"Joined tables (with a leading run column) are in {out.name}/tables/.",
        "Every model: clean and worst-case accuracy (%, L∞ at the run's main ε) with 95% Wilson intervals; the last "
        "column says whether the worst case differs significantly from the pair's reference (exact McNemar, Holm-"
        "corrected within its run). Table cross_model; a run of several seeds has one row per replicate "
        "(<architecture>/<recipe>/s<seed>), and table cross_model_replicates their mean ± sd.",
        "Spearman's ρ below is taken over every row of that table (each replicate is one point): replicates of one "
        "recipe are not independent models, so ρ describes these models, it does not generalise beyond them.",
    ] + [f"Spearman ρ of {r['measure']} with worst-case accuracy: {r['rho']:.2f} "
         f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] over {r['n']} models." for _, r in corr.iterrows()
         if np.isfinite(r["rho"]) and np.isfinite(r["ci_low"])] + [
        f"Spearman ρ of the L∞ worst case with {r['threat']}: {r['rho']:.2f} "
        + (f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] " if np.isfinite(r["ci_low"]) else "(no interval: too few models) ")
        + f"over {r['n']} models (table threat_correlations)."
        for _, r in comp.threat_correlations.iterrows() if np.isfinite(r["rho"])]
    threat_cols = threats()
    page = render_page(
        "compare.html.j2",
        runs=runs,
        written=now_text(),
        runs_table=html_table(runs_df, {"main ε": "text"}, id="runs-table"),
        cross=html_table(cross.drop(columns=[c for c in cross.columns if c in ("main ε", "worst-case ε")
                                              or (c.startswith("worst ") and c.endswith(" ε"))
                                              or (c in threat_cols and cross[c].isna().all())]),
                         {"clean": "pct", "clean ci_low": "pct", "clean ci_high": "pct", "worst case": "pct",
                          "worst ci_low": "pct", "worst ci_high": "pct", "autoattack": "pct",
                          **{c: "pct" for c in threat_cols},
                          "worst case vs reference": "text"}, id="cross-model-table") if len(cross) else None,
        replicates=html_table(rep_view, {c: "text" for c in rep_view.columns if c != "n_seeds"},
                              id="replicates-table") if len(rep_view) else None,
        significance=html_table(sig_view, {"difference": "num", "ci_low": "num", "ci_high": "num", "p_holm": "num",
                                           "eps": "num"}, id="significance-table") if len(sig_view) else None,
        significant=comp.significant(),
        differences=html_table(diff.rename(columns={"accuracy": "accuracy (%)"}),
                               {"accuracy (%)": "pct", "eps": "num", "Δ accuracy (points)": "delta"},
                               id="differences-table"),
        notes=notes,
        figures=entries,
        skipped=skipped,
    )
    write_page(folder.path / "index.html", page)
