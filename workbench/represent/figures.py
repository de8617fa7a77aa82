"""The report's figures of the represent probe, drawn from ``arrays/represent.npz``
(:func:`workbench.represent.run.load_arrays`) and its tables.

Image grids are one mosaic in one axes (many small axes are slow to lay out, as the
saliency grid found); each function returns None when its part was not run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..present import model_order, new_figure, palette, theme

Arrays = Mapping[str, np.ndarray]


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    return np.repeat(img[0][..., None], 3, axis=2) if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))


def mosaic(rows: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str], col_labels: Sequence[str] | None = None,
           *, tile: float = 0.9, title: str | None = None, notes: Sequence[Sequence[str] | None] | None = None,
           groups: int | None = None):
    """A grid of images (C, H, W) in [0, 1] (None: an empty cell) in one axes. ``notes``:
    per row, a short text drawn in each tile's top-left corner (None: none); ``groups``: a
    rule under every ``groups`` rows (rows that belong together, e.g. one model's)."""
    first = next(im for r in rows for im in r if im is not None)
    h, w = first.shape[-2:]
    pad = max(1, h // 8)
    nr, nc = len(rows), max(len(r) for r in rows)
    canvas = np.ones((nr * (h + pad) - pad, nc * (w + pad) - pad, 3), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            if im is not None:
                canvas[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = _rgb(im)
    tile = tile if nr * nc <= 120 else tile * 0.65  # large grids (many models) stay a readable size
    with theme():
        fig, axes = new_figure(1, w=tile * nc + 2.4, h=tile * nr + 0.9)
        ax = axes[0, 0]
        ax.imshow(canvas, interpolation="nearest")
        ax.grid(False)
        ax.set_yticks([i * (h + pad) + (h - 1) / 2 for i in range(nr)], list(row_labels), fontsize="x-small")
        if col_labels is not None:
            ax.xaxis.tick_top()
            ax.set_xticks([j * (w + pad) + (w - 1) / 2 for j in range(nc)], list(col_labels), fontsize="x-small")
        else:
            ax.set_xticks([])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        if title:
            ax.set_title(title, fontsize="small")
        for i, r in enumerate(notes or ()):
            for j, text in enumerate(r or ()):
                if text:
                    ax.text(j * (w + pad) - 0.5, i * (h + pad) - 0.5, text, fontsize="xx-small", va="top", ha="left",
                            color="black", bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
        for g in range(groups or nr, nr, groups or nr):
            ax.axhline(g * (h + pad) - (pad + 1) / 2, color="0.35", linewidth=0.8)
    return fig


def _models(arrays: Arrays, tables: Mapping[str, pd.DataFrame]) -> list[tuple[int, str]]:
    ids = [str(m) for m in arrays.get("models", [])]
    order = model_order(tables) if tables.get("models") is not None else ids
    rank = {m: i for i, m in enumerate(order)}
    return sorted(enumerate(ids), key=lambda t: rank.get(t[1], len(rank)))


def inversion(arrays: Arrays, tables: Mapping[str, pd.DataFrame], *, columns: int = 10, **_: Any):
    if "inversion.targets" not in arrays:
        return None
    t, s = arrays["inversion.targets"][:columns], arrays["inversion.seeds"][:columns]
    rows = [list(t), list(s)]
    labels = ["target", "seed"]
    for j, m in _models(arrays, tables):
        rows.append(list(arrays[f"inversion.x.{j}"][:columns]))
        labels.append(m)
    return mosaic(rows, labels, [f"label {int(c)}" for c in arrays["inversion.labels"][:columns]])


def features(arrays: Arrays, tables: Mapping[str, pd.DataFrame], *, columns: int = 10, **_: Any):
    ms = [(j, m) for j, m in _models(arrays, tables) if f"features.x.{j}" in arrays]
    if not ms:
        return None
    rows, labels = [], []
    for j, m in ms:
        x, idx, cls = arrays[f"features.x.{j}"], arrays[f"features.index.{j}"], arrays[f"features.class.{j}"]
        # the first seed of each feature
        first = [i for i in range(len(idx)) if i == 0 or idx[i] != idx[i - 1]][:columns]
        rows.append([x[i] for i in first])
        labels.append(f"{m}\n" + " ".join(f"{int(idx[i])}→{int(cls[i])}" for i in first))
    return mosaic(rows, labels, title="feature → class whose test images activate it most")


def synthesis(arrays: Arrays, tables: Mapping[str, pd.DataFrame], *, per_class: int = 2, **_: Any):
    if "synthesis.seeds" not in arrays:
        return None
    cls = arrays["synthesis.classes"]
    pick = [i for c in np.unique(cls) for i in np.flatnonzero(cls == c)[:per_class]]
    rows = [[arrays["synthesis.seeds"][i] for i in pick]]
    labels = ["seed"]
    for j, m in _models(arrays, tables):
        rows.append([arrays[f"synthesis.x.{j}"][i] for i in pick])
        labels.append(m)
    return mosaic(rows, labels, [f"class {int(cls[i])}" for i in pick])


def perceptual(arrays: Arrays, tables: Mapping[str, pd.DataFrame], *, examples: int = 2, **_: Any):
    """Rows: example × model; column c: the example pushed towards class c (the input
    itself sits in the column of its own class)."""
    if "perceptual.x" not in arrays:
        return None
    x, src, tgt = arrays["perceptual.x"], arrays["perceptual.source"], arrays["perceptual.target"]
    ncls = tgt.shape[1] + 1
    rows, labels = [], []
    for e in range(min(examples, len(x))):
        for j, m in _models(arrays, tables):
            row: list[np.ndarray | None] = [None] * ncls
            row[int(src[e])] = x[e]
            for k, t in enumerate(tgt[e]):
                row[int(t)] = arrays[f"perceptual.adv.{j}"][e, k]
            rows.append(row)
            labels.append(f"{m}\n(label {int(src[e])})")
    return mosaic(rows, labels, [f"→ {c}" for c in range(ncls)],
                  title="large-ε targeted L2 examples towards each class (the input in its own class's column)")


def gallery(arrays: Arrays, tables: Mapping[str, pd.DataFrame], **_: Any):
    if "gallery.x" not in arrays:
        return None
    x, why, lab = arrays["gallery.x"], arrays["gallery.why"], arrays["gallery.labels"]
    ms = _models(arrays, tables)
    rows, labels = [], []
    for i in range(len(x)):
        row: list[np.ndarray | None] = [x[i]]
        for j, _m in ms:
            adv = arrays[f"gallery.adv.{j}"][i]
            d = adv - x[i]
            scale = float(np.abs(d).max()) or 1.0
            row += [adv, 0.5 + d / (2 * scale)]
        rows.append(row)
        preds = "/".join(str(int(arrays[f"gallery.pred.{j}"][i])) for j, _ in ms)
        labels.append(f"{why[i]}\nlabel {int(lab[i])}, pred {preds}")
    cols = ["clean"] + [c for _, m in ms for c in (f"{m}\nadversarial", "δ (amplified)")]
    return mosaic(rows, labels, cols, title=f"PGD (L∞) at the main ε = {float(arrays['gallery.eps']):g}")


def measures(tables: Mapping[str, pd.DataFrame], **_: Any):
    """One panel per measure: each model's value with its 95% interval (grey: the seeds or
    clean images alone, the baseline)."""
    s = tables.get("represent")
    if s is None or not len(s):
        return None
    keys = list(dict.fromkeys(zip(s["task"], s["measure"])))
    order = model_order(tables) if tables.get("models") is not None else list(dict.fromkeys(s["model"]))
    colours = palette(order)
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    with theme():
        fig, axes = new_figure(ncols, nrows, w=3.6, h=2.4)
        for k, (task, measure) in enumerate(keys):
            ax = axes[k // ncols, k % ncols]
            d = s[(s["task"] == task) & (s["measure"] == measure)]
            names = list(d["model"])
            for i, (_, r) in enumerate(d.iterrows()):
                c = colours.get(r["model"], "grey")
                lo, hi = r["value"] - r["ci_low"], r["ci_high"] - r["value"]
                ax.errorbar([i], [r["value"]], yerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", color=c, capsize=3)
            ax.set_xticks(range(len(names)), [n.split("/")[-1] if "/" in n else n for n in names], fontsize="x-small",
                          rotation=30)
            ax.set_title(f"{task}: {measure}", fontsize="x-small")
        for k in range(len(keys), nrows * ncols):
            axes[k // ncols, k % ncols].set_visible(False)
    return fig


def derived_samples(arrays: Arrays, tables: Mapping[str, pd.DataFrame], **_: Any):
    """``arrays/training_samples.npz``: per model trained on a derived set, its sampled
    derived images above the training images they were built from; an original whose own
    label differs from the one trained on (D_det, D_rand) carries it in its corner."""
    ms = [(j, m) for j, m in _models(arrays, tables) if f"x.{j}" in arrays and len(arrays[f"x.{j}"])]
    if not ms:
        return None
    rows, labels, notes = [], [], []
    for j, m in ms:
        lab, orig = arrays[f"label.{j}"], arrays[f"original_label.{j}"]
        same = np.array_equal(orig, lab)
        rows += [list(arrays[f"x.{j}"]), list(arrays[f"original.{j}"])]
        labels += [f"{m}\nderived", "original (same label)" if same else "original (own label in the corner)"]
        notes += [None, None if same else [str(int(c)) for c in orig]]
    first = arrays[f"label.{ms[0][0]}"]
    if all(np.array_equal(arrays[f"label.{j}"], first) for j, _ in ms):
        cols, title = [str(int(c)) for c in first], "column: the label trained on (D_det / D_rand: the target class)"
    else:  # labels differ between models: each derived tile carries its own
        cols, title = None, "corner of a derived image: the label trained on"
        for i, (j, _) in enumerate(ms):
            notes[2 * i] = [str(int(c)) for c in arrays[f"label.{j}"]]
    return mosaic(rows, labels, cols, title=title, notes=notes, groups=2)


def encode_notes(res: Any) -> list[str]:
    """The notes of the report's "What the representations encode" section (none without the represent table)."""
    if res.get("represent") is None:
        return []
    j = res.get("represent_judge")
    notes = ["These measures are the workbench's own: the papers show the images (Engstrom et al. 2019, Santurkar "
             "et al. 2019, Tsipras et al. 2019) and give no number to compare with (docs/methods.md)."]
    if j is not None and len(j):
        r = j.iloc[0]
        notes.append(f"Judge: {r['judge']}, never attacked; {100 * float(r['test_accuracy']):.1f}% accurate on the "
                     f"{int(r['test_examples'])} test images.")
    return notes
