"""Print the headline figures of a run folder: per model, training time, images per second,
epochs, and accuracy under every attack (used by gpu_check.sh; works on any run)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.results import load  # noqa: E402


def main(run_dir: str) -> None:
    r = load(run_dir)
    models, hist, rob = r.tables["models"], r.tables["history"], r.tables["robustness"]
    n_train = r.environment.get("data", {}).get("train") if isinstance(r.environment.get("data"), dict) else None
    print(f"run {run_dir}: study {r.study.name}, device {r.environment['device']}")
    for _, m in models.iterrows():
        h = hist[hist.model == m.model]
        epoch_s = h.seconds.sum()
        line = f"{m.model}: {m.epochs} epochs, training {m.train_seconds:.1f} s wall (epochs incl. monitoring {epoch_s:.1f} s)"
        if n_train:
            line += f", {n_train * m.epochs / m.train_seconds:.0f} training images/s"
        print(line + ("" if not m.cached else " [cached]"))
        if getattr(m, "stopped_early", ""):
            print(f"    stopped early: {m.stopped_early}")
        cols = [c for c in ("epoch", "lr", "train_loss", "train_acc", "val_acc", "val_robust_acc", "co_pgd5_acc", "co_fgsm_acc", "seconds")
                if c in h.columns]
        if len(h) and cols:  # the learning curve: the first place to look when accuracy falls short
            print(h[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        for _, row in rob[rob.model == m.model].iterrows():
            print(f"    {row.attack:>18s} eps {row.eps:.4f}: accuracy {row.accuracy:.4f} (n={row.n}, adv. risk {row.adv_risk:.3f}, {row.seconds:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1])
