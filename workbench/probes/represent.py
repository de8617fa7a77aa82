"""The ``represent`` probe: what the representations encode (inversion, feature
visualisation, synthesis, perceptually aligned gradients scored by a judge, and the
evaluation gallery). A thin wrapper: the work is :func:`workbench.represent.run.represent`."""

from __future__ import annotations

import pandas as pd

from ..registry import TableSchema
from ..represent.run import ARRAY_FILE, RepresentProbe, arrays_bytes, represent
from .base import PROBES, ProbeContext
from ..views import Detail, FigureSpec, ReportSection, register_detail, register_figure, register_report_section

TABLES_REPRESENT: dict[str, TableSchema] = {
    "represent_per_example": (
        "one row per model × task × item: an inversion target, a visualised feature and seed, a synthesised image, a "
        "large-ε targeted example or a small-ε untargeted one (the same items for every model)",
        {
            "model": "model id",
            "task": "`inversion`, `features`, `synthesis`, `perceptual` (large-ε targeted L2) or `fool` (small-ε untargeted)",
            "item": "position of the item within the task (pairs the models' rows)",
            "index": "test-split index of the example (a feature's coordinate for `features`; -1 for synthesis)",
            "source_class": "class of the example (a feature's top class; the seed's class for synthesis)",
            "target_class": "class the image was pushed towards (= source_class for inversion and fool)",
            "seed": "seed number of the item (per target, feature or class)",
            "distance": "inversion: ‖φ(x) − φ(x_t)‖₂ / ‖φ(x_t)‖₂ reached",
            "ssim": "inversion: SSIM of the image with its target (torchmetrics)",
            "nl2": "inversion: ‖x − x_t‖₂ / ‖x_t‖₂; perceptual: ‖δ‖₂",
            "model_label": "the model's prediction on the image",
            "judge_label": "the judge's prediction on the image",
            "judge_agrees": "judge_label equals target_class (fool: equals the true class)",
            "cosine": "perceptual: cos(δ, μ_target − μ_source), μ the class-mean training images",
        },
    ),
    "represent": (
        "one row per model × task × measure, with a 95% interval (model `(seed)`: the seeds alone; `(clean)`: clean images)",
        {
            "model": "model id, `(seed)` or `(clean)`",
            "task": "as in represent_per_example",
            "measure": "what is measured",
            "n": "items",
            "value": "proportion or mean",
            "ci_low": "95% interval, lower end",
            "ci_high": "upper end",
            "interval": "`wilson` (proportions) or `bootstrap` (means, percentile)",
        },
    ),
    "represent_tests": (
        "paired tests between the models of each pair on the same items, Holm-corrected across the rows",
        {
            "reference": "reference model id",
            "model": "paired model id",
            "task": "task",
            "measure": "measure",
            "test": "`mcnemar` (judge verdicts) or `sign_flip` (paired sign-flip test of a difference of means)",
            "n": "paired items",
            "reference_value": "the reference's value",
            "model_value": "the paired model's value",
            "difference": "model_value − reference_value",
            "ci_low": "95% interval of the difference, lower end",
            "ci_high": "upper end",
            "b": "McNemar: items only the reference's image convinces the judge of",
            "c": "McNemar: items only the paired model's image does",
            "p_value": "two-sided p-value",
            "p_holm": "Holm-adjusted across this table",
            "significant": "p_holm < 0.05",
        },
    ),
    "represent_judge": (
        "the judge: a classifier that is not a studied model and is never attacked",
        {
            "judge": "what it is",
            "train_accuracy": "accuracy on the images it was fitted on",
            "test_accuracy": "accuracy on the test split",
            "test_examples": "test images",
        },
    ),
}


@PROBES.register("represent", config=RepresentProbe, tables=TABLES_REPRESENT, facts=("pairs", "data", "main_eps"))
def run_represent(ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Every enabled part of ``probes.represent`` on every model; the images go to
    ``arrays/represent.npz``."""
    out = represent(ctx.models, ctx.pairs, ctx.data, ctx.x, ctx.y, ctx.index, ctx.cfg, seed=ctx.seed_for("represent"),
                    main_eps=ctx.main_eps, batch_size=ctx.batch_size)
    ctx.artifacts[f"arrays/{ARRAY_FILE}"] = arrays_bytes(out.arrays)
    return {"represent_per_example": out.per_example, "represent": out.summary, "represent_tests": out.tests,
            "represent_judge": out.judge}


# --------------------------------------------------------------------------- report figures
# drawn by the report (workbench/views.py; workbench.represent.figures is imported only then)

register_figure(FigureSpec(
    "gallery",
    "Evaluation gallery",
    "Rows: the first probe examples (seeded), then the first ones each pair's second model classifies correctly "
        "but loses to PGD at the main ε; per model the adversarial image and its perturbation amplified to the full "
        "grey range (mid-grey is zero): a robust model's perturbations that look like strokes of another digit are "
        "what perceptually aligned gradients look like at a small ε.",
    "robustness",
    "workbench.represent.figures:gallery",
    (),
    order=130, arrays="represent.npz", load="workbench.represent.run:load_arrays"))

register_figure(FigureSpec(
    "represent_inversion",
    "Representation inversion",
    "Top: the targets x_t and the seeds; below, per model, the image found by minimising ‖φ(x) − φ(x_t)‖₂ / "
        "‖φ(x_t)‖₂ at its penultimate layer from that seed: an inversion that looks like its target means the "
        "representation keeps what we see; one that does not, with the same small distance, means it keeps "
        "something else (Engstrom et al. 2019).",
    "encode",
    "workbench.represent.figures:inversion",
    (),
    order=140, arrays="represent.npz", load="workbench.represent.run:load_arrays"))

register_figure(FigureSpec(
    "represent_features",
    "Feature visualisation",
    "Per model, images from noise that maximise single coordinates of the penultimate layer (first seed of "
        "each); k→c under a row names the coordinate and the class whose test images activate it most, which the "
        "judge's agreement is scored against.",
    "encode",
    "workbench.represent.figures:features",
    (),
    order=150, arrays="represent.npz", load="workbench.represent.run:load_arrays"))

register_figure(FigureSpec(
    "represent_synthesis",
    "Class-conditional synthesis",
    "Top: seeds drawn from a Gaussian fitted to each class's training images; below, per model, the seed "
        "after maximising that class's log-probability (Santurkar et al. 2019). The judge scores both: the "
        "seeds' own agreement is the baseline a model must add to.",
    "encode",
    "workbench.represent.figures:synthesis",
    (),
    order=160, arrays="represent.npz", load="workbench.represent.run:load_arrays"))

register_figure(FigureSpec(
    "represent_perceptual",
    "Perceptually aligned gradients",
    "Per example and model, its large-ε targeted L2 examples towards each class (the input itself in its own "
        "class's column) "
        "(Tsipras et al. 2019): for a robust model they are expected to look like the target class.",
    "encode",
    "workbench.represent.figures:perceptual",
    (),
    order=170, arrays="represent.npz", load="workbench.represent.run:load_arrays"))

register_figure(FigureSpec(
    "represent_measures",
    "What the representations encode: measures",
    "Each panel one measure, each point a model with its 95% interval (Wilson for the judge's agreement, "
        "bootstrap for means); (seed) and (clean) are the baselines without any model. The judge's accuracy "
        "on each model's small-ε adversarial examples says how far its verdicts can be bought by perturbations "
        "that transfer: a model whose examples fool the judge more is credited more by it.",
    "encode",
    "workbench.represent.figures:measures",
    ("represent",),
    order=180))

# its section of the report (shown when the probe ran or a figure of it was drawn), with its tables in full
register_report_section(ReportSection(
    "encode", "What the representations encode", order=30, tables=("represent",), optional=True,
    notes="workbench.represent.figures:encode_notes"))
_NUMS = (("value", "num"), ("ci_low", "num"), ("ci_high", "num"))
register_detail(Detail("represent", "encode", "Measures per model with 95% intervals (represent table)", "represent",
                       formats=_NUMS, order=10))
register_detail(Detail(
    "represent_tests", "encode",
    "Paired tests between the models of each pair on the same items (represent_tests; Holm-corrected)", "represent_tests",
    formats=(*_NUMS, ("reference_value", "num"), ("model_value", "num"), ("difference", "num"), ("p_value", "num"),
             ("p_holm", "num")), order=20))
register_detail(Detail("represent_judge", "encode", "The judge (represent_judge)", "represent_judge",
                       formats=(("train_accuracy", "num"), ("test_accuracy", "num")), order=30))
