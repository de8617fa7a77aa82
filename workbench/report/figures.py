"""The report's figures, one function per figure.

Every function takes the run's tables (``{name: DataFrame}``, as :func:`workbench.results.load`
gives them) and returns a matplotlib :class:`~matplotlib.figure.Figure`, or None when the
tables it needs are absent (a probe that was not run), so a run without probes still gets
a report. Figures are built with ``matplotlib.figure.Figure`` directly, never through
pyplot: no global figure registry to leak into (nothing to close), no backend switch in a
user's notebook, and rendering goes through Agg whatever backend is active.

The components that write the tables register each figure (its title, the one sentence
that tells how to read it, its section and which function here draws it:
:func:`workbench.views.register_figure`), and the report draws what is registered;
:func:`render` saves one figure in the study's formats.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

from ..present import (  # noqa: F401  (the shared helpers, used here and by cross_model/compare as F.*)
    DPI, NORM_LABEL, Tables, _Lazy, closest, eps_label, grid_eps, headline_warnings, middle, model_order, new_figure,
    palette, sns, table,
    theme,
)

_mpl_lines, _mpl_colors = _Lazy("matplotlib.lines"), _Lazy("matplotlib.colors")

_KIND_STYLE = {"loss": "-", "feat": "--", "rand": ":"}
_KIND_LABEL = {"loss": "δ_loss (PGD on CE)", "feat": "δ_feat (worst case for the layer)", "rand": "δ_rand (random)"}


# --------------------------------------------------------------------------- helpers


def legend(fig: Figure, handles: list, *, title: str | None = None) -> None:
    """One legend for the whole figure, outside the panels on the right."""
    if handles:
        fig.legend(handles=handles, loc="outside right center", title=title, frameon=False, fontsize="small")


def model_handles(models: Sequence[str], colours: Mapping[str, Any]) -> list[Line2D]:
    return [_mpl_lines.Line2D([], [], color=colours[m], marker="o", label=m) for m in models]


def layer_ticks(ax, df: pd.DataFrame, name_col: str = "layer", index_col: str = "layer_index") -> None:
    """Label the x axis with layer names when every model agrees on index -> name."""
    pairs = df[[index_col, name_col]].drop_duplicates()
    if pairs[index_col].is_unique:
        pairs = pairs.sort_values(index_col)
        ax.set_xticks(pairs[index_col].to_numpy(), [str(n) for n in pairs[name_col]], rotation=45, ha="right")
        ax.set_xlabel("layer (input → output)")
    else:
        ax.set_xlabel("layer index (input → output)")


def log_axis(ax) -> None:
    """Log y axis with plain numbers (``60``, ``0.2``) instead of ``6×10¹`` labels."""
    # matplotlib takes seconds to import; only drawing needs it
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
    ax.yaxis.set_minor_formatter(fmt)


def _architectures(tables: Tables, models: Sequence[str]) -> dict[str, list[str]]:
    """architecture -> its models (study order); one group when the models table is absent."""
    mt = table(tables, "models")
    if mt is None or "architecture" not in mt.columns:
        return {"": list(models)}
    arch_of = dict(zip(mt["model"].astype(str), mt["architecture"].astype(str)))
    out: dict[str, list[str]] = {}
    for m in models:
        out.setdefault(arch_of.get(m, ""), []).append(m)
    return out


# --------------------------------------------------------------------------- robustness


def accuracy_vs_eps(tables: Tables, *, main_eps: float | None = None) -> Figure | None:
    """Accuracy against ε, one panel per attack and norm (rows: architectures), the models of
    a pair in one panel, with 95% Wilson bands; transferred examples (crafted on the other
    model of the pair) dashed. The per-example worst case comes first."""
    rob = table(tables, "robustness")
    if rob is None:
        return None
    models = model_order(tables)
    colours = palette(models)
    clean = rob[rob["attack"] == "clean"].groupby("model")["accuracy"].first()
    has_ci = "ci_low" in rob.columns
    clean_ci = rob[rob["attack"] == "clean"].groupby("model")[["ci_low", "ci_high"]].first() if has_ci else None
    attacks = rob[rob["attack"] != "clean"].drop_duplicates(["attack", "norm"])
    attacks = pd.concat([attacks[attacks["attack"] == "worst_case"], attacks[attacks["attack"] != "worst_case"]])
    if attacks.empty:
        return None
    transfer = table(tables, "transfer")
    groups = _architectures(tables, models)
    with theme():
        fig, axes = new_figure(len(attacks), len(groups), extra_w=2.2, sharey=True)
        for r, (arch, arch_models) in enumerate(groups.items()):
            for c, (_, att) in enumerate(attacks.iterrows()):
                ax = axes[r, c]
                for m in arch_models:
                    d = rob[(rob["model"] == m) & (rob["attack"] == att["attack"]) & (rob["norm"] == att["norm"])]
                    d = d.sort_values("eps")
                    x = np.r_[0.0, d["eps"].to_numpy()] if m in clean else d["eps"].to_numpy()
                    y = np.r_[clean[m], d["accuracy"].to_numpy()] if m in clean else d["accuracy"].to_numpy()
                    ax.plot(x, y, marker="o", ms=3.5, color=colours[m], label=m)
                    if has_ci:
                        lo, hi = d["ci_low"].to_numpy(), d["ci_high"].to_numpy()
                        if m in clean:
                            lo, hi = np.r_[clean_ci.loc[m, "ci_low"], lo], np.r_[clean_ci.loc[m, "ci_high"], hi]
                        ax.fill_between(x, lo, hi, color=colours[m], alpha=0.18, lw=0)
                    if transfer is not None:
                        t = transfer[(transfer["target"] == m) & (transfer["attack"] == att["attack"])]
                        for src, ts in t.groupby("source", sort=False):
                            ts = ts.sort_values("eps")
                            tx = np.r_[0.0, ts["eps"].to_numpy()] if m in clean else ts["eps"].to_numpy()
                            ty = np.r_[clean[m], ts["accuracy"].to_numpy()] if m in clean else ts["accuracy"].to_numpy()
                            ax.plot(tx, ty, ls="--", marker="x", ms=3.5, color=colours[m], alpha=0.8)
                if main_eps and att["norm"] == "linf":
                    ax.axvline(main_eps, color="0.5", lw=0.8, ls=":")
                title = f"{att['attack']} ({NORM_LABEL.get(att['norm'], att['norm'])}, {att['loss']})"
                ax.set_title(f"{arch}: {title}" if arch and len(groups) > 1 else title)
                ax.set_xlabel(f"ε ({NORM_LABEL.get(att['norm'], att['norm'])})")
                ax.set_ylim(-0.02, 1.02)
            axes[r, 0].set_ylabel("accuracy")
        handles = model_handles(models, colours)
        handles.append(_mpl_lines.Line2D([], [], color="0.3", label="white-box"))
        if has_ci:
            # matplotlib takes seconds to import; only drawing needs it
            from matplotlib.patches import Patch

            handles.append(Patch(color="0.3", alpha=0.18, label="95% interval"))
        if transfer is not None:
            handles.append(_mpl_lines.Line2D([], [], color="0.3", ls="--", marker="x", label="transferred from\nthe pair's other model"))
        if main_eps:
            handles.append(_mpl_lines.Line2D([], [], color="0.5", ls=":", label=f"main ε = {eps_label(main_eps)}"))
        legend(fig, handles)
    return fig


def fgsm_pgd_gap(tables: Tables, **_: Any) -> Figure | None:
    """FGSM minus PGD accuracy against ε, per model."""
    gap = table(tables, "fgsm_pgd_gap")
    if gap is None:
        return None
    models = [m for m in model_order(tables) if m in set(gap["model"])]
    colours = palette(model_order(tables))
    with theme():
        fig, axes = new_figure(2, extra_w=2.2)
        for m in models:
            d = gap[gap["model"] == m].sort_values("eps")
            axes[0, 0].plot(d["eps"], d["gap"], marker="o", ms=3.5, color=colours[m])
            axes[0, 1].plot(d["eps"], d["fgsm_acc"], marker="o", ms=3.5, color=colours[m])
            axes[0, 1].plot(d["eps"], d["pgd_acc"], marker="x", ms=3.5, ls="--", color=colours[m])
        axes[0, 0].axhline(0, color="0.4", lw=0.8)
        axes[0, 0].set(title="FGSM − PGD accuracy", xlabel="ε (L∞)", ylabel="accuracy gap")
        axes[0, 1].set(title="FGSM (solid) and PGD (dashed)", xlabel="ε (L∞)", ylabel="accuracy", ylim=(-0.02, 1.02))
        legend(fig, model_handles(models, colours))
    return fig


def training_curves(tables: Tables, **_: Any) -> Figure | None:
    """Clean and robust validation accuracy and training loss per epoch, per model."""
    hist = table(tables, "history")
    if hist is None or not {"model", "epoch"} <= set(hist.columns):
        return None
    models = [m for m in model_order(tables) if m in set(hist["model"])]
    colours = palette(model_order(tables))
    panels = [(c, t) for c, t in (("val_acc", "clean accuracy (validation)"),
                                  ("val_robust_acc", "robust accuracy (validation, PGD)"),
                                  ("train_loss", "training loss")) if c in hist.columns]
    if not panels:
        return None
    with theme():
        fig, axes = new_figure(len(panels), extra_w=2.2)
        for i, (col, title) in enumerate(panels):
            ax = axes[0, i]
            for m in models:
                d = hist[hist["model"] == m].sort_values("epoch")
                ax.plot(d["epoch"], d[col], color=colours[m], lw=1.4)
            ax.set(title=title, xlabel="epoch")
            if col != "train_loss":
                ax.set_ylim(-0.02, 1.02)
        legend(fig, model_handles(models, colours))
    return fig


# --------------------------------------------------------------------------- Lipschitz


def lipschitz_eps(lip: pd.DataFrame, norm: str, main_eps: float | None) -> float | None:
    """The ε the Lipschitz figure and summary use for ``norm`` (:func:`workbench.present.grid_eps`)."""
    return grid_eps(lip, norm, main_eps)


def lipschitz_ratio(tables: Tables, *, main_eps: float | None = None) -> Figure | None:
    """Feature Lipschitz ratio D per layer (top, log) and relative distortion (bottom), per
    norm (columns), for δ_loss / δ_feat / δ_rand (line styles), per model (colours)."""
    lip = table(tables, "lipschitz")
    if lip is None:
        return None
    models = [m for m in model_order(tables) if m in set(lip["model"])]
    colours = palette(model_order(tables))
    norms = [n for n in ("linf", "l2") if n in set(lip["norm"])]
    with theme():
        fig, axes = new_figure(len(norms), 2, w=4.2, extra_w=2.6, sharex="col")
        for c, norm in enumerate(norms):
            eps = lipschitz_eps(lip, norm, main_eps)
            d = lip[(lip["norm"] == norm) & np.isclose(lip["eps"], eps)]
            for m in models:
                for kind, dk in d[d["model"] == m].groupby("kind", sort=False):
                    dk = dk.sort_values("layer_index")
                    ls = _KIND_STYLE.get(str(kind), "-.")
                    axes[0, c].plot(dk["layer_index"], dk["mean"], ls=ls, marker="o", ms=3, color=colours[m])
                    axes[1, c].plot(dk["layer_index"], dk["rel_mean"], ls=ls, marker="o", ms=3, color=colours[m])
            log_axis(axes[0, c])
            log_axis(axes[1, c])
            axes[0, c].set(title=f"{NORM_LABEL[norm]}, ε = {eps_label(eps)}", ylabel="D = ‖Δφ‖₂ / ‖δ‖")
            axes[1, c].set(ylabel="relative change ‖Δφ‖ / ‖φ‖")
            layer_ticks(axes[1, c], d)
        handles = model_handles(models, colours)
        kinds = [k for k in _KIND_STYLE if k in set(lip["kind"])]
        handles += [_mpl_lines.Line2D([], [], color="0.3", ls=_KIND_STYLE[k], label=_KIND_LABEL[k]) for k in kinds]
        legend(fig, handles)
    return fig


def logit_lipschitz(tables: Tables, **_: Any) -> Figure | None:
    """Yang et al.'s logit local Lipschitz estimate against ε, per model (log scale)."""
    ll = table(tables, "logit_lipschitz")
    if ll is None:
        return None
    models = [m for m in model_order(tables) if m in set(ll["model"])]
    colours = palette(model_order(tables))
    with theme():
        fig, axes = new_figure(1, w=4.2, extra_w=2.2)
        ax = axes[0, 0]
        protocols = list(dict.fromkeys(ll["protocol"])) if "protocol" in ll.columns else [None]
        styles = {"search": "-", "yang2020": "--"}
        for m in models:
            for protocol in protocols:
                d = ll[ll["model"] == m] if protocol is None else ll[(ll["model"] == m) & (ll["protocol"] == protocol)]
                d = d.sort_values("eps")
                ax.errorbar(d["eps"], d["mean"], yerr=d["sem"], marker="o", ms=3.5, capsize=2, color=colours[m],
                            ls=styles.get(protocol, "-"))
        log_axis(ax)
        ax.set(xlabel="ε (L∞)", ylabel="mean ‖Δf‖₁ / ‖Δx‖∞", title="logit local Lipschitz")
        handles = model_handles(models, colours)
        if len(protocols) > 1:
            labels = {"search": "workbench search", "yang2020": "Yang et al.'s code"}
            handles += [_mpl_lines.Line2D([], [], color="0.3", ls=styles.get(p, "-"), label=labels.get(p, p))
                        for p in protocols]
        legend(fig, handles)
    return fig


# --------------------------------------------------------------------------- linearity


def linearity(tables: Tables, **_: Any) -> Figure | None:
    """Local linearity γ(ε) and gradient alignment against ε (bands: 10–90% quantiles)."""
    lin = table(tables, "linearity")
    if lin is None:
        return None
    models = [m for m in model_order(tables) if m in set(lin["model"])]
    colours = palette(model_order(tables))
    metrics = [(k, t) for k, t in (("gamma", "local linearity γ(ε) (lower bound)"), ("grad_alignment", "gradient alignment"))
               if k in set(lin["metric"])]
    with theme():
        fig, axes = new_figure(len(metrics), extra_w=2.2)
        for i, (metric, title) in enumerate(metrics):
            ax = axes[0, i]
            for m in models:
                d = lin[(lin["model"] == m) & (lin["metric"] == metric)].sort_values("eps")
                ax.plot(d["eps"], d["mean"], marker="o", ms=3.5, color=colours[m])
                ax.fill_between(d["eps"], d["q10"], d["q90"], color=colours[m], alpha=0.15, lw=0)
            ax.set(title=title, xlabel="ε (L∞)")
            if metric == "grad_alignment":
                ax.set(ylabel="cos(∇ℓ(x), ∇ℓ(x+η))")
            else:
                ax.set(ylabel="max |ℓ(x+δ) − ℓ(x) − δᵀ∇ℓ|")
        legend(fig, model_handles(models, colours))
    return fig


def loss_surface(tables: Tables, *, main_eps: float | None = None, max_examples: int = 4) -> Figure | None:
    """2-D loss surfaces: rows are examples, columns models; one colour scale per row."""
    surf = table(tables, "loss_surface")
    if surf is None:
        return None
    eps = closest(surf["eps"], main_eps) if main_eps is not None else middle(surf["eps"])
    surf = surf[np.isclose(surf["eps"], eps)]
    models = [m for m in model_order(tables) if m in set(surf["model"])]
    examples = sorted(surf["example"].unique())[:max_examples]
    with theme():
        fig, axes = new_figure(len(models), len(examples), w=2.6, h=2.3, extra_w=0.6)
        for r, ex in enumerate(examples):
            de = surf[surf["example"] == ex]
            vmin, vmax = float(de["loss"].min()), float(de["loss"].max())
            im = None
            for c, m in enumerate(models):
                ax = axes[r, c]
                grid = de[de["model"] == m].pivot_table(index="b", columns="a", values="loss")
                if grid.empty:
                    ax.set_axis_off()
                    continue
                a, b = grid.columns.to_numpy(float), grid.index.to_numpy(float)
                im = ax.imshow(grid.to_numpy(), origin="lower", extent=(a[0], a[-1], b[0], b[-1]), aspect="auto",
                               vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
                ax.plot([0], [0], marker="+", color="white", ms=8)
                ax.grid(False)
                if r == 0:
                    ax.set_title(m, fontsize="small")
                if r == len(examples) - 1:
                    ax.set_xlabel("a: sign-gradient (×ε)")
                if c == 0:
                    ax.set_ylabel(f"example {ex}\nb: random (×ε)")
            if im is not None:
                fig.colorbar(im, ax=list(axes[r]), label="CE loss", shrink=0.9)
        fig.suptitle(f"loss surfaces at ε = {eps_label(eps)}", fontsize="medium")
    return fig


def loss_slice(tables: Tables, *, main_eps: float | None = None) -> Figure | None:
    """1-D loss slices along the sign gradient and a random direction; thin lines are examples."""
    sl = table(tables, "loss_slice")
    if sl is None:
        return None
    eps = closest(sl["eps"], main_eps) if main_eps is not None else middle(sl["eps"])
    sl = sl[np.isclose(sl["eps"], eps)]
    models = [m for m in model_order(tables) if m in set(sl["model"])]
    colours = palette(model_order(tables))
    directions = [d for d in ("gradient", "random") if d in set(sl["direction"])] + sorted(
        set(sl["direction"]) - {"gradient", "random"})
    with theme():
        fig, axes = new_figure(len(directions), extra_w=2.2, sharey=True)
        for i, direction in enumerate(directions):
            ax = axes[0, i]
            dd = sl[sl["direction"] == direction]
            for m in models:
                dm = dd[dd["model"] == m]
                for _, de in dm.groupby("example"):
                    de = de.sort_values("t")
                    ax.plot(de["t"], de["loss"], color=colours[m], lw=0.6, alpha=0.35)
                mean = dm.groupby("t")["loss"].mean()
                ax.plot(mean.index, mean.to_numpy(), color=colours[m], lw=2)
            ax.set(title=f"along the {direction} direction", xlabel=f"t (units of ε = {eps_label(eps)})")
        axes[0, 0].set_ylabel("CE loss")
        legend(fig, model_handles(models, colours))
    return fig


# --------------------------------------------------------------------------- representations


def cka(tables: Tables, **_: Any) -> Figure | None:
    """CKA heatmaps: one panel per (model A, model B) combination (self-CKA first, then the
    pairs), rows per CKA kind; rows of a heatmap are A's layers, columns B's."""
    ck = table(tables, "cka")
    if ck is None:
        return None
    order = model_order(tables)
    rank = {m: i for i, m in enumerate(order)}
    combos = ck[["model_a", "model_b"]].drop_duplicates()
    combos = sorted(
        map(tuple, combos.to_numpy()),
        key=lambda ab: (ab[0] != ab[1], rank.get(ab[0], 99), rank.get(ab[1], 99)),
    )
    kinds = [k for k in ("linear", "debiased") if k in set(ck["kind"])] + sorted(set(ck["kind"]) - {"linear", "debiased"})
    with theme():
        fig, axes = new_figure(len(combos), len(kinds), w=3.0, h=2.9, extra_w=0.8)
        im = None
        for r, kind in enumerate(kinds):
            for c, (a, b) in enumerate(combos):
                ax = axes[r, c]
                d = ck[(ck["kind"] == kind) & (ck["model_a"] == a) & (ck["model_b"] == b)]
                if d.empty:
                    ax.set_axis_off()
                    continue
                mat = d.pivot_table(index="layer_a_index", columns="layer_b_index", values="value")
                names_a = d.drop_duplicates("layer_a_index").set_index("layer_a_index")["layer_a"]
                names_b = d.drop_duplicates("layer_b_index").set_index("layer_b_index")["layer_b"]
                im = ax.imshow(mat.to_numpy(), origin="lower", vmin=0, vmax=1, cmap="magma", aspect="auto",
                               interpolation="nearest")
                ax.grid(False)
                ax.set_yticks(range(len(mat.index)), [str(names_a.get(i, i)) for i in mat.index], fontsize="x-small")
                ax.set_xticks(range(len(mat.columns)), [str(names_b.get(i, i)) for i in mat.columns], fontsize="x-small",
                              rotation=45, ha="right")
                ax.set_title(("self: " + a) if a == b else f"{a} (rows)\nvs {b}", fontsize="small")
                if c == 0:
                    ax.set_ylabel(f"{kind} CKA")
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), label="CKA", shrink=0.8)
    return fig


def linear_probe(tables: Tables, **_: Any) -> Figure | None:
    """Linear-probe accuracy per layer: one panel per ε (clean first); the adversarial panels
    repeat each model's clean curve faintly for reference."""
    lp = table(tables, "linear_probe")
    if lp is None:
        return None
    models = [m for m in model_order(tables) if m in set(lp["model"])]
    colours = palette(model_order(tables))
    eps_values = sorted(float(e) for e in lp["eps"].unique())
    with theme():
        fig, axes = new_figure(len(eps_values), w=2.9, extra_w=2.2, sharey=True)
        for c, e in enumerate(eps_values):
            ax = axes[0, c]
            for m in models:
                d = lp[(lp["model"] == m) & np.isclose(lp["eps"], e)].sort_values("layer_index")
                ax.plot(d["layer_index"], d["accuracy"], marker="o", ms=3, color=colours[m])
                if e > 0:
                    d0 = lp[(lp["model"] == m) & (lp["eps"] == 0)].sort_values("layer_index")
                    ax.plot(d0["layer_index"], d0["accuracy"], color=colours[m], lw=0.8, alpha=0.35)
            ax.set(title="clean" if e == 0 else f"PGD, ε = {eps_label(e)}", ylim=(-0.02, 1.02))
            layer_ticks(ax, lp)
        axes[0, 0].set_ylabel("probe accuracy (test)")
        handles = model_handles(models, colours)
        if any(e > 0 for e in eps_values) and 0 in eps_values:
            handles.append(_mpl_lines.Line2D([], [], color="0.3", lw=0.8, alpha=0.35, label="clean (for reference)"))
        legend(fig, handles)
    return fig


def saliency_grid(saliency: Mapping[str, Any] | None, tables: Tables, *, max_examples: int = 6) -> Figure | None:
    """Rows: examples; columns: the input, then each method's map for each model.

    ``saliency`` is what ``workbench.probes.saliency.load_saliency`` returns. A map is
    |attribution| summed over channels, scaled to its own 99th percentile so that each
    map's structure is visible (gradient scales differ by orders of magnitude across
    models). The grid is one mosaic image in one axes: ~40 small axes took 1.7 s to lay out.
    """
    if not saliency or not saliency.get("maps"):
        return None
    # matplotlib takes seconds to import; only drawing needs it
    from matplotlib import colormaps

    inputs = np.asarray(saliency["inputs"], dtype=np.float32)
    labels = np.asarray(saliency.get("labels", np.full(len(inputs), -1)))
    maps: Mapping[str, Mapping[str, Any]] = saliency["maps"]
    order = model_order(tables)
    rank = {m: i for i, m in enumerate(order)}
    columns = [(meth, m) for meth in maps for m in sorted(maps[meth], key=lambda x: rank.get(x, len(rank)))]
    n = min(len(inputs), max_examples)
    if n == 0 or not columns:
        return None
    h, w = inputs.shape[-2:]
    pad = max(1, h // 8)
    canvas = np.ones((n * (h + pad) - pad, (1 + len(columns)) * (w + pad) - pad, 3), dtype=np.float32)
    heat = colormaps["inferno"]

    def put(r: int, c: int, rgb: np.ndarray) -> None:
        canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = rgb

    for r in range(n):
        img = np.clip(inputs[r], 0, 1)
        put(r, 0, np.repeat(img[0][..., None], 3, axis=2) if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0)))
        for c, (meth, m) in enumerate(columns, start=1):
            a = np.abs(np.asarray(maps[meth][m][r], dtype=np.float32)).sum(axis=0)
            scale = float(np.percentile(a, 99)) or float(a.max()) or 1.0
            put(r, c, heat(np.clip(a / scale, 0, 1))[..., :3])
    with theme():
        fig, axes = new_figure(1, w=1.2 * (1 + len(columns)) + 0.4, h=1.2 * n + 0.6)
        ax = axes[0, 0]
        ax.imshow(canvas, interpolation="nearest")
        ax.grid(False)
        ax.xaxis.tick_top()
        ax.set_xticks([c * (w + pad) + (w - 1) / 2 for c in range(1 + len(columns))],
                      ["input"] + [f"{meth.replace('_', ' ')}\n{m}" for meth, m in columns], fontsize="x-small")
        ax.set_yticks([r * (h + pad) + (h - 1) / 2 for r in range(n)],
                      [f"label {int(labels[r])}" if labels[r] >= 0 else f"#{r}" for r in range(n)], fontsize="x-small")
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    return fig


def saliency_metrics(tables: Tables, **_: Any) -> Figure | None:
    """Gini sparsity, infidelity and sensitivity per method and model; Spearman agreement of
    the pair's maps (mean ± s.e.m. over examples)."""
    sm = table(tables, "saliency_metrics")
    sa = table(tables, "saliency_agreement")
    if sm is None and sa is None:
        return None
    order = model_order(tables)
    colours = palette(order)
    panels: list[tuple[str, str]] = []
    if sm is not None:
        panels += [(c, t) for c, t in (("gini", "Gini sparsity (higher: sparser)"),
                                       ("infidelity", "infidelity (lower: more faithful)"),
                                       ("sensitivity", "max sensitivity (lower: more stable)"))
                   if sm[c].notna().any()]
    if sa is not None:
        panels.append(("spearman", "pair agreement (Spearman ρ),\ncoloured by the paired model"))
    with theme():
        fig, axes = new_figure(len(panels), w=3.3, extra_w=2.2)
        for i, (col, title) in enumerate(panels):
            ax = axes[0, i]
            if col == "spearman":
                hue_order = [m for m in order if m in set(sa["model"])]
                sns.barplot(sa, x="method", y="spearman", hue="model", hue_order=hue_order, palette=colours,
                            errorbar="se", ax=ax, legend=False)
            else:
                hue_order = [m for m in order if m in set(sm["model"])]
                sns.barplot(sm, x="method", y=col, hue="model", hue_order=hue_order, palette=colours, errorbar="se",
                            ax=ax, legend=False)
                if col in ("infidelity", "sensitivity") and (sm[col] > 0).all():
                    log_axis(ax)
            ax.set(title=title, xlabel="", ylabel="")
            ax.tick_params(axis="x", labelrotation=20)
        shown = set(sm["model"]) if sm is not None else set()
        shown |= set(sa["model"]) if sa is not None else set()
        legend(fig, model_handles([m for m in order if m in shown], colours))
    return fig


# --------------------------------------------------------------------------- soundness


def soundness(tables: Tables, **_: Any) -> Figure | None:
    """Models (rows) × checks (columns): green pass, red warn, amber a warning the worst case
    holds (an attack comparison whose stronger attack the worst case's others match),
    annotated with the value."""
    snd = table(tables, "soundness")
    if snd is None:
        return None
    models = [m for m in model_order(tables) if m in set(snd["model"])]
    checks = list(dict.fromkeys(snd["check"].astype(str)))
    # the warnings that apply to the worst case, as the verdict reads them
    status = snd.assign(check=snd["check"].astype(str), _head=headline_warnings(snd).to_numpy()).set_index(["model", "check"])
    mat = np.full((len(models), len(checks)), np.nan)
    with theme():
        fig, axes = new_figure(1, w=max(4.0, 1.05 * len(checks) + 2.0), h=0.55 * len(models) + 1.8)
        ax = axes[0, 0]
        for i, m in enumerate(models):
            for j, ch in enumerate(checks):
                if (m, ch) in status.index:
                    row = status.loc[(m, ch)]
                    row = row.iloc[0] if isinstance(row, pd.DataFrame) else row
                    held = row["status"] == "warn" and not row["_head"]
                    mat[i, j] = 0.5 if held else 1.0 if row["status"] == "warn" else 0.0
                    val = row["value"]
                    text = f"{val:.3g}" if isinstance(val, (int, float, np.number)) and np.isfinite(val) else str(val)
                    ax.text(j, i, f"{'warn, held' if held else row['status']}\n{text}", ha="center", va="center",
                            fontsize="x-small", color="white" if mat[i, j] == 1.0 else "black")
        ax.imshow(np.ma.masked_invalid(mat), cmap=_mpl_colors.ListedColormap(["#a6dba0", "#fdb863", "#d6604d"]), vmin=0,
                  vmax=1, aspect="auto")
        ax.grid(False)
        ax.set_xticks(range(len(checks)), checks, rotation=30, ha="right")
        ax.set_yticks(range(len(models)), models)
    return fig


def render(fig: Figure, stem: str, out_dir: Path | None, formats: Sequence[str]) -> tuple[bytes, dict[str, Path]]:
    """Save ``fig`` as ``<out_dir>/<stem>.<fmt>`` for each format; return the PNG bytes (always
    rendered: the HTML embeds them) and the files written."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    png = buf.getvalue()
    # The constrained layout is solved by the PNG draw; freezing it makes the other formats
    # skip a second solve (about a third of their time) and lay out identically.
    fig.set_layout_engine("none")
    files: dict[str, Path] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            if fmt == "png":
                path.write_bytes(png)
            else:
                fig.savefig(path, format=fmt, dpi=DPI)
            files[fmt] = path
    return png, files
