"""Write the README's quickstart figures from a run's tables (and, where Chromium is
installed, the report screenshot).

One command, after any change that moves the quickstart's numbers:

    python docs/readme_table.py --run

runs ``workbench run studies/quickstart.yaml --out reports/quickstart --threads 1 -q`` (one
thread: the figures do not then depend on the machine's core count), then replaces the block
between ``<!-- quickstart:begin -->`` and ``<!-- quickstart:end -->`` in README.md with the
figures of that run. Without ``--run`` it reads an existing run folder (``RUN_DIR``, default
``reports/quickstart``). ``--check`` writes nothing and exits 1 when README.md differs from
the run (tests/test_readme.py does the same after running the quickstart itself).
``--screenshot`` also rewrites docs/images/quickstart-report.png in a headless Chromium
(tests/test_browser.py's driver; skipped with a message when there is none).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
RUN_COMMAND = ["workbench", "run", "studies/quickstart.yaml", "--out", "reports/quickstart", "--threads", "1", "-q"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci(row: pd.Series) -> str:
    return f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _eps_text(eps: float) -> str:
    from workbench.report.figures import eps_label

    return eps_label(float(eps))


def render(tables: dict[str, pd.DataFrame], main_eps: float) -> str:
    """The README block (without its markers) from a quickstart run's tables."""
    from workbench.verdict import verdict_text

    rob, models = tables["robustness"], tables["models"]
    ids = [str(m) for m in models["model"]]
    heads = [str(r) for r in models["recipe"]]
    e = _eps_text(main_eps)

    def at(d: pd.DataFrame, model: str, **where) -> pd.DataFrame:
        d = d[d["model"] == model]
        for k, v in where.items():
            d = d[np.isclose(d[k], v)] if isinstance(v, float) else d[d[k] == v]
        return d

    def one(d: pd.DataFrame, model: str, column: str = "mean", **where) -> float:
        hit = at(d, model, **where)
        if len(hit) != 1:
            raise ValueError(f"expected one row for {model} {where}, found {len(hit)}")
        return float(hit[column].iloc[0])

    rows: list[tuple[str, list[str]]] = []
    clean = [at(rob, m, attack="clean").iloc[0] for m in ids]
    rows.append(("clean accuracy", [f"{_pct(r['accuracy'])} {_ci(r)}" for r in clean]))
    worst = [at(rob, m, attack="worst_case", norm="linf", eps=main_eps).iloc[0] for m in ids]
    best = max(range(len(ids)), key=lambda i: worst[i]["accuracy"])
    rows.append((f"**worst case** over every white-box attack, L∞ ε = {e}",
                 [(f"**{_pct(r['accuracy'])}**" if i == best else _pct(r["accuracy"])) + f" {_ci(r)}"
                  for i, r in enumerate(worst)]))
    linf_attacks = rob[(rob["norm"] == "linf") & ~rob["attack"].isin(["clean", "worst_case"])]["attack"].unique()
    for attack in linf_attacks:
        rows.append((f"`{attack}` accuracy at ε = {e}",
                     [_pct(one(rob, m, "accuracy", attack=attack, eps=main_eps)) for m in ids]))

    lip = tables.get("lipschitz")
    if lip is not None:
        d = lip[(lip["norm"] == "linf") & (lip["layer"] != "logits")]
        pen = str(d.sort_values("layer_index")["layer"].iloc[-1])
        loss = [one(d, m, kind="loss", layer=pen, eps=main_eps) for m in ids]
        low = min(range(len(ids)), key=lambda i: loss[i])
        rows.append((f"feature Lipschitz ratio at `{pen}` (penultimate), δ_loss, L∞ ε = {e}",
                     [f"**{v:.1f}**" if i == low else f"{v:.1f}" for i, v in enumerate(loss)]))
        rows.append(("same, δ_feat / δ_rand", [f"{one(d, m, kind='feat', layer=pen, eps=main_eps):.1f} / "
                                               f"{one(d, m, kind='rand', layer=pen, eps=main_eps):.1f}" for m in ids]))
    logit = tables.get("logit_lipschitz")
    if logit is not None:
        protocols = logit["protocol"].unique() if "protocol" in logit.columns else [None]
        for proto in protocols:
            where = {"protocol": proto} if proto is not None else {}
            rows.append((f"logit local Lipschitz{f' (`{proto}`)' if proto is not None else ' (Yang et al.)'}, ε = {e}",
                         [f"{one(logit, m, eps=main_eps, **where):.1f}" for m in ids]))
    lin = tables.get("linearity")
    if lin is not None:
        rows.append((f"local linearity γ, ε = {e} (mean)", [f"{one(lin, m, metric='gamma', eps=main_eps):.2f}" for m in ids]))
        rows.append((f"gradient alignment, ε = {e} (mean)",
                     [f"{one(lin, m, metric='grad_alignment', eps=main_eps):.3f}" for m in ids]))
    lp = tables.get("linear_probe")
    if lp is not None:
        layer = str(lp[lp["layer"] != "logits"].sort_values("layer_index")["layer"].iloc[-1])
        rows.append((f"linear probe at `{layer}`: clean / PGD ε = {e}",
                     [f"{_pct(one(lp, m, 'accuracy', layer=layer, eps=0.0))} / "
                      f"{_pct(one(lp, m, 'accuracy', layer=layer, eps=main_eps))}" for m in ids]))
    sal = tables.get("saliency_metrics")
    if sal is not None:
        rows.append(("Gini sparsity of saliency maps (mean)",
                     [f"{sal[(sal['model'] == m) & (sal['method'] == 'saliency')]['gini'].mean():.3f}" for m in ids]))
    cka = tables.get("cka")
    if cka is not None and len(ids) == 2:
        d = cka[(cka["model_a"] == ids[0]) & (cka["model_b"] == ids[1]) & (cka["kind"] == "linear")
                & (cka["layer_a"] == cka["layer_b"])].sort_values("layer_a_index")
        first, last = d.iloc[0], d[d["layer_a"] != "logits"].iloc[-1]
        rows.append((f"linear CKA between the two models, `{first['layer_a']}` → `{last['layer_a']}`",
                     [f"{first['value']:.3f} → {last['value']:.3f}"] + [""] * (len(ids) - 1)))
    snd = tables.get("soundness")
    if snd is not None:
        cells = []
        for m in ids:
            s = snd[snd["model"] == m]
            warn = s.loc[s["status"] == "warn", "check"].tolist()
            cells.append(f"{len(s) - len(warn)}/{len(s)} pass" + (f" ({', '.join(warn)} warn)" if warn else ""))
        rows.append(("soundness checks", cells))

    n = sorted({int(v) for v in rob["n"]})
    lines = [
        f"Quickstart figures, seed {int(models['seed'].iloc[0])}, from the tables of a run of the current code "
        f"(`python docs/readme_table.py --run`: `{' '.join(RUN_COMMAND)}`; {' / '.join(map(str, n))} test images; "
        "95 % Wilson intervals in brackets):",
        "",
        "| | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
        *[f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows],
    ]
    sig = tables.get("significance")
    if sig is not None and len(ids) == 2:
        s = sig[(sig["measure"] == "worst_case") & (sig["norm"] == "linf") & np.isclose(sig["eps"], main_eps)]
        if len(s):
            s = s.iloc[0]
            word = "significant" if bool(s["significant"]) else "not significant"
            lines += ["", f"The worst-case difference ({_pct(s['model_value'])} against {_pct(s['reference_value'])}) "
                          f"is {word} by McNemar's exact test (Holm-adjusted p = {s['p_holm']:.1e}); the report states "
                          "every such test in words."]
    lines += ["", "What the terminal shows at the end of the run (`workbench run` prints this verdict):", "", "```text",
              verdict_text(tables, main_eps), "```"]
    return "\n".join(lines)


def load_run(run_dir: Path) -> tuple[dict[str, pd.DataFrame], float]:
    from workbench import results

    res = results.load(run_dir)
    return res.tables, res.study.main_eps()


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def screenshot(run_dir: Path, png: Path) -> bool:
    """A 1280×2000 screenshot of the run's index.html in headless Chromium (the browser
    test's driver, tests/test_browser.py); False when no Chromium is installed."""
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_browser import chromium_binary, open_page  # noqa: E402
    finally:
        sys.path.pop(0)
    binary = chromium_binary()
    if binary is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        page = open_page(binary, run_dir / "index.html", Path(tmp), "quickstart")
        if page["problems"]:
            raise SystemExit(f"the report has problems in Chromium: {page['problems']}")
        shutil.copyfile(page["screenshot"], png)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", default=str(ROOT / "reports" / "quickstart"), help="a quickstart run folder")
    p.add_argument("--run", action="store_true", help="run the quickstart into reports/quickstart first")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when README.md differs")
    p.add_argument("--screenshot", action="store_true", help="also rewrite docs/images/quickstart-report.png")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.run:
        subprocess.run([sys.executable, "-m", "workbench", *RUN_COMMAND[1:]], cwd=ROOT, check=True)
        run_dir = ROOT / "reports" / "quickstart"
    tables, main_eps = load_run(run_dir)
    text = README.read_text()
    new = replace_block(text, render(tables, main_eps))
    if args.check:
        if new != text:
            print(f"README.md's quickstart figures differ from {run_dir}: run python docs/readme_table.py --run")
            return 1
        print(f"README.md's quickstart figures match {run_dir}")
        return 0
    README.write_text(new)
    print(f"README.md: quickstart figures written from {run_dir}")
    if args.screenshot:
        png = ROOT / "docs" / "images" / "quickstart-report.png"
        print(f"{png}: written" if screenshot(run_dir, png) else "no Chromium found: the screenshot was not updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
