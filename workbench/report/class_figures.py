"""Figures of the per-class tables and of the attacks' step curves (registered by
workbench/evaluation/per_class.py and workbench/evaluation/robustness.py through
:mod:`workbench.views`; imported only when the report draws them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import Tables, closest, eps_label, legend, model_handles, model_order, new_figure, palette, sns, table, theme


def _main_setting(df: pd.DataFrame, main_eps: float | None) -> float | None:
    """The L∞ ε of ``df``'s worst case closest to the main ε (None without an L∞ worst case)."""
    w = df[(df["attack"] == "worst_case") & (df["norm"] == "linf")]
    if w.empty:
        return None
    return closest(w["eps"].unique(), main_eps if main_eps else float(np.median(w["eps"].unique())))


def per_class_accuracy(tables: Tables, *, main_eps: float | None = None):
    """Bars per class and model: clean accuracy, and the worst case at the main ε, with Wilson intervals."""
    pc = table(tables, "per_class")
    if pc is None:
        return None
    eps = _main_setting(pc, main_eps)
    panels = [("clean", pc[pc["attack"] == "clean"])]
    if eps is not None:
        w = pc[(pc["attack"] == "worst_case") & (pc["norm"] == "linf") & np.isclose(pc["eps"], eps)]
        panels.append((f"worst case, L∞ ε = {eps_label(eps)}", w))
    models = [m for m in model_order(tables) if m in set(pc["model"])]
    colours = palette(models)
    classes = pc.drop_duplicates("label").sort_values("label")["class"].astype(str).tolist()
    with theme():
        fig, axes = new_figure(len(panels), w=max(3.4, 0.45 * len(classes) * max(len(models), 1) ** 0.5 + 1.5),
                               extra_w=1.8, sharey=True)
        for ax, (title, d) in zip(axes[0], panels):
            d = d.assign(**{"class": d["class"].astype(str)})
            sns.barplot(data=d, x="class", y="accuracy", hue="model", order=classes, hue_order=models,
                        palette=colours, ax=ax, errorbar=None, legend=False)
            # Wilson intervals from the table (seaborn would bootstrap the single value)
            for patch_group, m in zip(ax.containers, models):
                dm = d[d["model"] == m].set_index("class").reindex(classes)
                xs = [p.get_x() + p.get_width() / 2 for p in patch_group]
                # clipped: at 0 or 1 the interval's end may differ from the accuracy in the last bit
                yerr = [(dm["accuracy"] - dm["ci_low"]).clip(lower=0), (dm["ci_high"] - dm["accuracy"]).clip(lower=0)]
                ax.errorbar(xs, dm["accuracy"], yerr=yerr,
                            fmt="none", ecolor="0.25", elinewidth=0.8, capsize=1.5)
            ax.set_title(title)
            ax.set_xlabel("true class")
            ax.set_ylim(0, 1.02)
            ax.tick_params(axis="x", rotation=45)
        axes[0, 0].set_ylabel("accuracy")
        legend(fig, model_handles(models, colours))
    return fig


def adversarial_confusion(tables: Tables, *, main_eps: float | None = None):
    """Heatmaps true class × worst-case prediction at the main ε, one per model, rows normalised."""
    cm = table(tables, "adversarial_confusion")
    if cm is None:
        return None
    eps = _main_setting(cm, main_eps)
    if eps is None:
        return None, "no L∞ worst case at the main ε"
    w = cm[(cm["attack"] == "worst_case") & (cm["norm"] == "linf") & np.isclose(cm["eps"], eps)]
    models = [m for m in model_order(tables) if m in set(w["model"])]
    labels = sorted(set(cm["label"]) | set(cm.loc[cm["prediction"] >= 0, "prediction"]))
    names = dict(zip(cm["label"], cm["class"].astype(str))) | dict(zip(cm["prediction"], cm["predicted_class"].astype(str)))
    cols = labels + ([-1] if (w["prediction"] < 0).any() else [])
    k = len(labels)
    size = max(3.2, 0.32 * k + 1.6)
    with theme():
        fig, axes = new_figure(len(models), w=size, h=size)
        for ax, m in zip(axes[0], models):
            d = w[w["model"] == m].pivot_table(index="label", columns="prediction", values="count", aggfunc="sum")
            d = d.reindex(index=labels, columns=cols).fillna(0).astype(int)
            frac = d.div(d.sum(axis=1).replace(0, 1), axis=0)
            sns.heatmap(frac, ax=ax, vmin=0, vmax=1, cmap="rocket_r", cbar=ax is axes[0, -1], square=True,
                        annot=d.to_numpy() if k <= 12 else False, fmt="d", annot_kws={"fontsize": "x-small"},
                        xticklabels=[names.get(c, str(c)) for c in cols], yticklabels=[names.get(c, str(c)) for c in labels])
            ax.set_title(f"{m}: worst case, L∞ ε = {eps_label(eps)}")
            ax.set_xlabel("predicted class (adversarial)")
            ax.set_ylabel("true class")
    return fig


def attack_curves(tables: Tables, *, main_eps: float | None = None):
    """Mean loss (top) and accuracy (bottom) against the attack's step, one column per model:
    every traced attack at the L∞ ε closest to the main ε (other norms at their grid's middle)."""
    ac = table(tables, "attack_curves")
    if ac is None:
        return None
    models = [m for m in model_order(tables) if m in set(ac["model"])]
    settings = []
    for (attack, norm), d in ac.groupby(["attack", "norm"], sort=False):
        grid = sorted(d["eps"].unique())
        eps = closest(grid, main_eps) if main_eps and norm == "linf" else grid[len(grid) // 2]
        settings.append((attack, norm, eps))
    colours = dict(zip(settings, sns.color_palette("colorblind", max(len(settings), 1))))
    # matplotlib takes seconds to import; only drawing needs it
    from matplotlib.lines import Line2D

    with theme():
        fig, axes = new_figure(len(models), 2, extra_w=2.4, sharex="col")
        for c, m in enumerate(models):
            for attack, norm, eps in settings:
                d = ac[(ac["model"] == m) & (ac["attack"] == attack) & (ac["norm"] == norm) & np.isclose(ac["eps"], eps)]
                for r, (_, dr) in enumerate(d.groupby("restart")):
                    dr = dr.sort_values("step")
                    kw = {"color": colours[(attack, norm, eps)], "lw": 1.4 if r == 0 else 0.7, "alpha": 1.0 if r == 0 else 0.6}
                    axes[0, c].plot(dr["step"], dr["mean_loss"], **kw)
                    axes[1, c].plot(dr["step"], dr["accuracy"], marker="o", ms=2.5, **kw)
            axes[0, c].set_title(m)
            axes[1, c].set_xlabel("attack step")
            axes[1, c].set_ylim(-0.02, 1.02)
        axes[0, 0].set_ylabel("mean loss at the iterate")
        axes[1, 0].set_ylabel("accuracy at the iterate")
        handles = [Line2D([], [], color=colours[s], label=f"{s[0]}, ε = {eps_label(s[2])}") for s in settings]
        if (ac["restart"] > 0).any():
            handles.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.6, label="later restarts"))
        legend(fig, handles)
    return fig
