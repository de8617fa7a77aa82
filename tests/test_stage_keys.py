"""Stage keys are derived, never listed: each field of each section, changed in turn, recomputes
exactly the stages that receive it (its own stage, the stages given a fact made from it, and
the stages that need those), and every other stage is reused. The perturbations are
generated from the pydantic schema, so a field added later is covered without an edit here."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from workbench.errors import StudyError
from workbench.evaluation.soundness import SoundnessConfig
from workbench.facts import RunFacts
from workbench.runner import load_study_data, model_jobs, run_study
from workbench.stages import FACTS, SECTIONS, STAGES, StageContext, UndeclaredFact, plan, stage_keys
from workbench.study import study_from_dict
from conftest import CHEAP_CASCADE

BASE = {
    "name": "keys",
    "data": {"name": "digits", "limit_train": 200, "limit_test": 120},
    "architectures": [{"name": "small_cnn", "options": {"width": 4, "fc": 16}}],
    # the main ε (0.1) comes from the adversarial recipe, not from the evaluation grid
    "recipes": ["standard", {"name": "pgd_at", "eps": 0.1, "steps": 2}],
    "train": {"epochs": 1, "batch_size": 64, "monitor_examples": 32, "monitor_steps": 2},
    "evaluation": {"examples": 32, "eps": [0.05, 0.1], "attacks": ["fgsm", {"name": "pgd", "steps": 2}],
                   "soundness": {"enabled": True}, "worst_case": CHEAP_CASCADE},
    "probes": {"examples": 16, "lipschitz": {}, "linearity": {}, "saliency": {}, "cka": {}, "linear_probe": {}, "represent": {},
               "corruptions": {"corruptions": ["contrast", "fog"], "severities": [1, 2]},
               "threats": {"layers": "penultimate", "steps": 2, "train_examples": 60, "corruptions": ["contrast"],
                           "spatial": {"max_angle": 10, "max_shift": 1, "angles": 3, "shifts": 3}}},
    "report": {"enabled": False},
}

#: the fields outside a stage's own section that shared facts are made from (workbench/facts.py):
#: changing one must change exactly these facts. Written here by hand on purpose: the test
#: checks the code against it.
FACT_FIELDS: dict[tuple[str, ...], set[str]] = {
    ("evaluation", "eps"): {"eval_eps"},
    ("evaluation", "eps_l2"): {"eval_eps_l2"},
    # the main ε is also the ε that monitors training (a model without an L∞ training ε): in the model keys
    ("evaluation", "main_eps"): {"main_eps", "models"},
    ("evaluation", "examples"): {"eval_examples"},
    ("probes", "examples"): {"probe_examples"},
    ("probes", "batch_size"): {"probe_batch_size"},
    # the soundness settings are also a fact, for the corruptions probe's check after the probes (a table step)
    **{("evaluation", "soundness", f): {"soundness"} for f in SoundnessConfig.model_fields},
}


@pytest.fixture(scope="module")
def data():
    return load_study_data(study_from_dict(BASE), torch.device("cpu"))


def _keys(study, data) -> tuple[dict[str, str], dict[str, Any]]:
    """(stage -> cache key, fact -> key part) of a study, computed as the runner computes them."""
    model_keys = {job.spec.id: job.key() for job in model_jobs(study, data)}
    facts = RunFacts(study, data, torch.device("cpu"), model_keys)
    return stage_keys(plan(study), study, facts), {f: facts.key(f) for f in FACTS}


def _pattern_words(info) -> list[str]:
    """The alternatives of a ``pattern="^(a|b)$"`` constraint."""
    import re

    for m in getattr(info, "metadata", []):
        pat = getattr(m, "pattern", None)
        hit = re.fullmatch(r"\^\((.*)\)\$", pat or "")
        if hit:
            return hit.group(1).split("|")
    return []


def _candidates(value: Any, annotation: Any, info=None) -> list[Any]:
    """Values to try in place of ``value`` (JSON-like, as in a study file)."""
    literals = [a for arg in (typing.get_args(annotation) or (annotation,)) for a in typing.get_args(arg)
                if typing.get_origin(arg) is typing.Literal] if annotation is not None else []
    if typing.get_origin(annotation) is typing.Literal:
        literals = list(typing.get_args(annotation))
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value / 2, value * 2, value + 0.1, 0.05]
    if isinstance(value, str):
        return [v for v in literals + _pattern_words(info) if v != value] + [value + "x", "penultimate", "all"]
    if isinstance(value, (list, tuple)):
        out: list[Any] = []
        if len(value) > 1:
            out += [list(value[:-1]), list(value[1:])]
        if value and isinstance(value[0], (int, float)) and not isinstance(value[0], bool):
            out += [list(value) + [float(value[-1]) / 2]]
        inner = [a for arg in typing.get_args(annotation) for a in (typing.get_args(arg) or (arg,))]
        lits = [a for arg in inner for a in (typing.get_args(arg) if typing.get_origin(arg) is typing.Literal else ())]
        # tuple[Literal[...], ...]: the literals are one level up
        lits += [a for arg in typing.get_args(annotation) if typing.get_origin(arg) is typing.Literal
                 for a in typing.get_args(arg)]
        out += [[v] for v in lits if [v] != list(value)] + [[0.05], []]
        return out
    if isinstance(value, dict):
        return [{**value, "extra_option": 1}]
    if value is None:
        return [0.05, [0.05], 3, "penultimate", True]
    raise AssertionError(f"no perturbation for {value!r}")


def _set(raw: dict, path: tuple[str, ...], value: Any) -> dict:
    import copy

    out = copy.deepcopy(raw)
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if node is None:  # a probe enabled with defaults
            raise KeyError(path)
    node[path[-1]] = value
    return out


def _fields(model: type[BaseModel], path: tuple[str, ...], dumped: dict) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(path, current value, field info) of every leaf field of a section; nested models recurse."""
    out = []
    for name, info in model.model_fields.items():
        if name not in dumped:
            continue
        ann = info.annotation
        sub = next((a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and isinstance(dumped[name], dict):
            out += _fields(sub, path + (name,), dumped[name])
        else:
            out.append((path + (name,), dumped[name], info))
    return out


def _perturbations(base) -> list[tuple[tuple[str, ...], Any]]:
    """One valid change of every field of every stage section and of every section's own fields."""
    raw = base.to_dict()
    sections: list[tuple[type[BaseModel], tuple[str, ...]]] = []
    for name in STAGES.in_order():
        stage = STAGES.get(name)
        if stage.config is not None and stage.section:
            sections.append((stage.config, stage.section))
    for name in SECTIONS.in_order():
        own = SECTIONS.get(name)
        if not any(s.section == (name,) for s in (STAGES.get(n) for n in STAGES.in_order())):
            sections.append((own, (name,)))
    todo = []
    for model, path in sections:
        node = raw
        for part in path:
            node = node[part]
        dumped = model.model_validate(node).model_dump(mode="json") if len(path) > 1 else node
        for fpath, value, info in _fields(model, path, dumped):
            if len(fpath) == 2 and fpath[0] in SECTIONS and fpath[1] not in SECTIONS.get(fpath[0]).model_fields:
                continue  # another stage's section inside this one (evaluation.soundness): its own stage
            for cand in _candidates(value, info.annotation, info):
                try:
                    study = study_from_dict(_set(raw, fpath, cand))
                except (StudyError, KeyError):
                    continue
                if study.to_dict() != base.to_dict():
                    todo.append((fpath, cand))
                    break
            else:
                raise AssertionError(f"no valid change found for {'.'.join(fpath)} = {value!r}: add a candidate")
    return todo


def _with_needers(names: set[str], stages) -> set[str]:
    out = set(names)
    changed = True
    while changed:
        changed = False
        for s in stages:
            if s.name not in out and any(n in out for n in s.needs):
                out.add(s.name)
                changed = True
    return out


def test_each_field_recomputes_exactly_the_stages_that_receive_it(data):
    base = study_from_dict(BASE)
    stages = plan(base)
    assert {s.name for s in stages} == set(STAGES.in_order())  # every registered stage is under test
    keys0, facts0 = _keys(base, data)
    perturbations = _perturbations(base)
    covered = {p[:2] for p, _ in perturbations}
    assert {("evaluation", "soundness"), ("probes", "cka"), ("evaluation", "eps"), ("probes", "examples")} <= covered
    for path, value in perturbations:
        study = study_from_dict(_set(base.to_dict(), path, value))
        keys1, facts1 = _keys(study, data)
        what = f"{'.'.join(path)} = {value!r}"
        changed_facts = {f for f in FACTS if facts1[f] != facts0[f]}
        assert changed_facts == FACT_FIELDS.get(path, set()), what
        # the stage of the deepest section holding the field (evaluation.soundness.x: soundness, not evaluate)
        holders = [s for s in stages if s.section and path[:len(s.section)] == s.section]
        owner = {max(holders, key=lambda s: len(s.section)).name} if holders else set()
        readers = {s.name for s in stages if set(s.reads(None if s.config is None else _section(study, s))) & changed_facts}
        expected = _with_needers(owner | readers, stages)
        recomputed = {n for n in keys0 if keys1.get(n) != keys0[n]} | (set(keys1) - set(keys0))
        assert recomputed == expected, what


def _section(study, stage):
    from workbench.stages import section_of

    return section_of(study, stage)


def test_the_evaluation_grid_reaches_only_the_stages_that_read_it(tmp_path):
    """Changing evaluation.eps (the main ε fixed by the recipe) recomputes the evaluation, its
    checks and the probes without a grid of their own; CKA, saliency and a probe with its own
    grid are reused. (On 0714894 every probe was recomputed.)"""
    study = {**BASE, "train": {**BASE["train"], "epochs": 1},
             "evaluation": {**BASE["evaluation"], "soundness": {"enabled": False}},
             "probes": {"examples": 8, "batch_size": 8, "saliency": {"methods": ["saliency"], "examples": 2},
                        "cka": {"bootstrap": 0}, "lipschitz": {"eps": [0.1], "kinds": ["rand"], "steps": 1,
                                                              "logit_lipschitz": False},
                        "linearity": {"steps": 1, "pgd_steps": 1, "surface": {"grid": 3, "examples": 1, "refine": 1}}}}
    first = run_study(study_from_dict(study), tmp_path / "a", store=tmp_path / "store", progress=False, threads=1)
    assert first.cached_stages == []
    again = {**study, "evaluation": {**study["evaluation"], "eps": [0.1, 0.2]}}
    second = run_study(study_from_dict(again), tmp_path / "b", store=tmp_path / "store", progress=False, threads=1)
    assert sorted(second.cached_stages) == ["probe:cka", "probe:lipschitz", "probe:saliency"]
    assert second.tables["linearity"]["eps"].max() == pytest.approx(0.2)


def test_a_stage_cannot_read_a_fact_it_did_not_declare():
    ctx = StageContext({"seed": 3}, stage="demo")
    assert ctx.seed == 3
    with pytest.raises(UndeclaredFact, match="demo.*main_eps"):
        ctx.main_eps  # noqa: B018
    with pytest.raises(ValueError, match="unknown facts"):
        StageContext({"study": object()})
    # every stage's declared facts are facts, and no stage is handed the study
    for name in STAGES.in_order():
        stage = STAGES.get(name)
        assert set(stage.facts) <= set(FACTS), name


#: the probes that compare the models of a pair
PAIRWISE = {n for n in STAGES.in_order() if "pairs" in STAGES.get(n).facts and n.startswith("probe:")}


@pytest.mark.parametrize("change, expected", [
    # the pairs reach the transfer rows (and the stages reading the evaluation's output: the
    # checks, the APGD cascade) and the pair-wise probes only
    ({"pairs": [["small_cnn/pgd_at", "small_cnn/standard"]]}, {"evaluate", "apgd_cascade", "soundness"} | PAIRWISE),
    # the seed reaches every model, so every stage
    ({"seed": 1}, set(STAGES.in_order())),
])
def test_study_level_facts_reach_the_stages_that_declare_them(data, change, expected):
    assert {"probe:cka", "probe:saliency"} <= PAIRWISE and "probe:lipschitz" not in PAIRWISE
    base = study_from_dict(BASE)
    keys0, _ = _keys(base, data)
    keys1, _ = _keys(study_from_dict({**BASE, **change}), data)
    assert {n for n in keys0 if keys1[n] != keys0[n]} == expected
