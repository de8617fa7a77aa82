"""The tidy schema of every table a run writes (``<run>/tables/<name>.parquet|csv``).

One row per observation, one column per variable. This dict is the single source of the
table documentation in the README (``python -m workbench.tables`` prints it as Markdown)
and of the schema tests: every table a run writes must have exactly these columns (extra
columns are allowed only where ``OPEN`` lists the table, e.g. recipe-specific history).
"""

from __future__ import annotations

TABLES: dict[str, tuple[str, dict[str, str]]] = {
    # ------------------------------------------------------------------ runner
    "models": (
        "one row per model: each trained one (architecture × recipe), then each loaded one (study `models`)",
        {
            "model": "model id: `<architecture>/<recipe>`, or the id of a loaded model",
            "architecture": "architecture label (`loaded` for a loaded model)",
            "arch_name": "registry name of the architecture (a loaded model: its network's class)",
            "recipe": "recipe label (`loaded` for a loaded model)",
            "recipe_name": "registry name of the recipe (`loaded` for a loaded model)",
            "train_eps": "training ε (0 for non-adversarial recipes)",
            "train_norm": "training norm (`none` for non-adversarial recipes)",
            "role": "`reference` (first recipe), `paired` (other recipes) or `loaded`",
            "key": "model-store key (hash of everything that determines the weights; a loaded model: of its source, "
            "weight file and declaration)",
            "cached": "weights reused from the store",
            "resumed_from_epoch": "epoch a resumed training started from (empty if none)",
            "epochs": "epochs trained",
            "train_seconds": "training time (seconds, when trained)",
            "stopped_early": "why training stopped early (e.g. catastrophic overfitting), else empty",
            "parameters": "number of parameters",
            "source": "where a loaded model came from (e.g. `robustbench:cifar10/Linf/Wong2020Fast`); empty if trained",
            "file": "the weight file a loaded model was read from; empty if trained or built without weights",
            "sha256": "sha256 of that weight file; empty if none",
        },
    ),
    "pairs": (
        "which models are compared (study `pairs`): by default each architecture's first-recipe model with its others "
        "(same initial weights and data order)",
        {
            "pair": "`<reference>~<model>`",
            "architecture": "the two models' architecture label, or `<a>~<b>` when they differ (`loaded` for loaded models)",
            "reference": "model id of the reference (first recipe), or of the pair's first model",
            "model": "model id of the other model",
        },
    ),
    "history": (
        "per-epoch training history",
        {
            "model": "model id",
            "epoch": "epoch (1-based)",
            "lr": "learning rate at the end of the epoch",
            "train_loss": "mean training loss (on the inputs trained on)",
            "train_acc": "training accuracy (on the inputs trained on)",
            "val_acc": "clean accuracy on the held-out monitor batch",
            "monitor_eps": "ε of the monitoring PGD (the model's L∞ training ε, else the main ε of the study that trained it)",
            "val_robust_acc": "PGD accuracy on the monitor batch at `monitor_eps`",
            "seconds": "epoch wall time",
        },
    ),
    "robustness": (
        "white-box accuracy and adversarial risk: model × attack × ε (clean: attack `clean`, ε 0; per-example "
        "worst case over every white-box attack at a norm and ε: attack `worst_case`)",
        {
            "model": "model id",
            "attack": "attack label (e.g. `fgsm`, `pgd20-linf`, `aa-standard-linf`), `clean` or `worst_case`",
            "method": "attack registry name (`fgsm`, `pgd`, `autoattack`), `clean` or `worst_case`",
            "norm": "`linf`, `l2` or `none`",
            "loss": "loss the attack ascends (`ce`, `margin`, `dlr`; `mixed` for an AutoAttack ensemble; `any` for the worst case)",
            "steps": "attack steps",
            "restarts": "random restarts (per-example worst case kept)",
            "eps": "ε in pixel units",
            "n": "examples",
            "accuracy": "accuracy on the adversarial examples",
            "ci_low": "lower end of the 95% Wilson interval of the accuracy",
            "ci_high": "upper end of the 95% Wilson interval of the accuracy",
            "adv_risk": "adversarial risk: mean cross-entropy at the adversarial examples (worst case: of the highest loss found)",
            "seconds": "time to craft and score",
        },
    ),
    "per_example": (
        "per-example outcome of every evaluation: model × attack × ε × example (and the worst case)",
        {
            "model": "model id",
            "attack": "attack label, `clean` or `worst_case`",
            "norm": "`linf`, `l2` or `none`",
            "eps": "ε",
            "index": "position of the example in the test split",
            "correct": "classified correctly",
            "loss": "cross-entropy at the (adversarial) input",
        },
    ),
    "transfer": (
        "examples crafted on one model of a pair, scored on the other (both directions)",
        {
            "architecture": "the pair's architecture label (as in `pairs`)",
            "source": "model the examples were crafted on",
            "target": "model that scored them",
            "attack": "attack label",
            "method": "attack registry name",
            "norm": "norm",
            "loss": "attack loss",
            "steps": "attack steps",
            "restarts": "restarts",
            "eps": "ε",
            "n": "examples",
            "accuracy": "target's accuracy on the transferred examples",
            "ci_low": "lower end of the 95% Wilson interval of the accuracy",
            "ci_high": "upper end of the 95% Wilson interval of the accuracy",
            "adv_risk": "target's mean cross-entropy on them",
        },
    ),
    "soundness": (
        "evaluation soundness checks (docs/methods.md): model × check",
        {
            "model": "model id",
            "check": "check name",
            "status": "`pass` or `warn`",
            "value": "the measured number",
            "threshold": "the limit it is compared with",
            "p_value": "one-sided p-value of the check's test (empty for checks of exact properties); it warns only below "
            "`soundness.level`",
            "detail": "one sentence with the counts and the p-value",
        },
    ),
    "soundness_per_example": (
        "per-example outcome of the soundness checks' white-box attacks (they enter the worst case): model × job × example",
        {
            "model": "model id",
            "job": "the check's attack (`reference`, `more_steps`, `extra_restarts`, `margin`, `large_eps`, `fgsm-<loss>@<ε>`)",
            "attack": "attack label of its settings",
            "norm": "`linf` or `l2`",
            "eps": "ε",
            "index": "position of the example in the test split",
            "correct": "classified correctly",
            "loss": "cross-entropy at the adversarial input",
        },
    ),
    "significance": (
        "paired tests between the models of each pair, Holm-corrected across all rows of a run",
        {
            "reference": "reference model id",
            "model": "paired model id",
            "measure": "`clean`, `worst_case` (accuracy, exact McNemar) or a representation measure (paired bootstrap)",
            "norm": "norm (`none` for clean and representation measures)",
            "eps": "ε (0 for clean)",
            "test": "`mcnemar` or `paired_bootstrap`",
            "n": "paired examples",
            "reference_value": "the measure for the reference",
            "model_value": "the measure for the paired model",
            "difference": "model_value − reference_value",
            "ci_low": "95% interval of the difference, lower end (paired Wald for accuracies, percentile bootstrap otherwise)",
            "ci_high": "upper end",
            "b": "McNemar: examples only the reference gets right (empty for bootstrap)",
            "c": "McNemar: examples only the paired model gets right",
            "p_value": "two-sided p-value",
            "p_holm": "Holm-adjusted p-value across the run's comparisons",
            "significant": "p_holm < 0.05",
        },
    ),
    # ------------------------------------------------------------------ probes
    "lipschitz": (
        "feature-space Lipschitz ratios D = ‖φ(x+δ) − φ(x)‖₂ / ‖δ‖: model × layer × norm × ε × kind of δ",
        {
            "model": "model id",
            "layer": "layer name",
            "layer_index": "position of the layer (input → output)",
            "feature_dim": "flattened feature size",
            "norm": "`linf` or `l2` (‖δ‖ is measured in this norm)",
            "eps": "ε",
            "kind": "`loss` (PGD on CE), `feat` (PGD on the feature change at this layer), `rand` (random, same norm)",
            "n": "examples",
            "mean": "mean ratio",
            "median": "median ratio",
            "q10": "10% quantile",
            "q90": "90% quantile",
            "sem": "standard error of the mean",
            "ci_low": "95% bootstrap interval of the mean over examples: lower end",
            "ci_high": "upper end",
            "rel_mean": "mean relative change ‖Δφ‖ / ‖φ(x)‖",
            "rel_median": "median relative change",
            "over_random": "mean ratio divided by the mean ratio of `rand` at the same setting",
        },
    ),
    "logit_lipschitz": (
        "logit local Lipschitz estimate of Yang et al. 2020: mean over x of max ‖f(x)−f(x′)‖₁ / ‖x−x′‖∞",
        {
            "model": "model id",
            "eps": "L∞ radius",
            "steps": "ascent steps",
            "n": "examples",
            "mean": "mean over examples",
            "median": "median",
            "sem": "standard error",
            "ci_low": "95% bootstrap interval of the mean over examples: lower end",
            "ci_high": "upper end",
        },
    ),
    "linearity": (
        "local linearity γ(ε) (Qin et al.) and gradient alignment (Andriushchenko & Flammarion): model × ε × metric",
        {
            "model": "model id",
            "eps": "ε (L∞)",
            "metric": "`gamma` or `grad_alignment`",
            "n": "examples (gradient alignment excludes zero-norm gradients)",
            "mean": "mean",
            "median": "median",
            "q10": "10% quantile",
            "q90": "90% quantile",
            "sem": "standard error",
            "ci_low": "95% bootstrap interval of the mean over examples: lower end",
            "ci_high": "upper end",
        },
    ),
    "fgsm_pgd_gap": (
        "FGSM − PGD accuracy at the same ε (near zero ⇔ locally linear loss)",
        {
            "model": "model id",
            "eps": "ε (L∞)",
            "fgsm_acc": "FGSM accuracy",
            "pgd_acc": "PGD accuracy (L∞, CE, `linearity.pgd_steps` steps) on the probe examples",
            "gap": "fgsm_acc − pgd_acc",
        },
    ),
    "loss_surface": (
        "2-D loss surface ℓ(x + a·d₁ + b·d₂), d₁ = sign ∇ℓ, d₂ random ⊥ d₁ (a, b in units of ε)",
        {
            "model": "model id",
            "example": "example number within the probe set",
            "eps": "ε that scales the axes",
            "a": "coordinate along sign-gradient (units of ε)",
            "b": "coordinate along the random direction (units of ε)",
            "loss": "cross-entropy",
        },
    ),
    "loss_slice": (
        "1-D loss slices along the sign-gradient and a random direction",
        {
            "model": "model id",
            "example": "example number within the probe set",
            "eps": "ε that scales the axis",
            "direction": "`gradient` or `random`",
            "t": "step along the direction (units of ε)",
            "loss": "cross-entropy",
        },
    ),
    "saliency_metrics": (
        "per-example attribution metrics: model × method × example",
        {
            "model": "model id",
            "method": "`saliency`, `integrated_gradients` or `smoothgrad`",
            "example": "example number within the saliency set",
            "index": "position in the test split",
            "gini": "Gini sparsity of |attribution| (0 uniform, 1 one-hot)",
            "infidelity": "captum infidelity (normalize=True)",
            "sensitivity": "captum sensitivity_max",
        },
    ),
    "saliency_agreement": (
        "Spearman rank correlation of the maps of the two models of a pair",
        {
            "pair": "`<reference>~<model>`",
            "reference": "reference model id",
            "model": "paired model id",
            "method": "attribution method",
            "example": "example number",
            "spearman": "rank correlation of |attribution|",
        },
    ),
    "cka": (
        "CKA between every layer of model A and every layer of model B (pairs, and each model with itself)",
        {
            "model_a": "model id (rows)",
            "model_b": "model id (columns)",
            "layer_a": "layer of model A",
            "layer_b": "layer of model B",
            "layer_a_index": "position of layer A",
            "layer_b_index": "position of layer B",
            "kind": "`linear` or `debiased`",
            "value": "CKA (linear: in [0, 1]; debiased: can be slightly negative for unrelated features)",
        },
    ),
    "linear_probe": (
        "logistic-regression probe accuracy per layer on frozen features, clean (ε 0) and under PGD",
        {
            "model": "model id",
            "layer": "layer name",
            "layer_index": "position of the layer",
            "feature_dim": "feature size",
            "eps": "ε of the PGD examples (0: clean)",
            "accuracy": "probe accuracy on test features",
            "val_accuracy": "accuracy on the validation split at the chosen C",
            "C": "inverse regularisation chosen on validation",
            "train_examples": "training examples fitting the probe",
        },
    ),
}

#: tables whose rows may carry extra, recipe- or probe-specific columns
OPEN = {"history"}


def markdown() -> str:
    out = []
    for name, (what, cols) in TABLES.items():
        out.append(f"#### `{name}`: {what}\n")
        out.append("| column | meaning |\n|---|---|")
        out.extend(f"| `{c}` | {d} |" for c, d in cols.items())
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(markdown())
