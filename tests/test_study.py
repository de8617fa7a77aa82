"""Study files: parsing, extends, overrides and every error path (file + field + message)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from workbench.errors import StudyError
from workbench.study import load_study, parse_eps, study_from_dict, study_schema

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
architectures: [small_cnn]
recipes: [standard, {name: pgd_at, eps: "8/255"}]
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> StudyError:
    with pytest.raises(StudyError) as info:
        load_study(write(tmp_path, text))
    return info.value


def test_minimal_study_defaults(tmp_path):
    s = load_study(write(tmp_path, MINIMAL))
    assert s.name == "s"
    assert s.data.name == "digits"
    assert [m.id for m in s.models()] == ["small_cnn/standard", "small_cnn/pgd_at"]
    assert s.pairs() == [("small_cnn", "small_cnn/standard", "small_cnn/pgd_at")]
    assert s.recipes[1].eps == pytest.approx(8 / 255)
    assert s.main_eps() == pytest.approx(8 / 255)


@pytest.mark.parametrize("text,value", [(0.1, 0.1), ("8/255", 8 / 255), ("0.03", 0.03), (1, 1)])
def test_eps_forms(text, value):
    assert parse_eps(text) == pytest.approx(value)


def test_shipped_studies_validate():
    for path in sorted((ROOT / "studies").glob("*.yaml")):
        s = load_study(path)
        assert s.model_ids(), path


@pytest.mark.parametrize(
    "text,field,words",
    [
        ("architectures: [small_cnn]\nrecipes: [standard]\nbogus: 1\n", "bogus", "unknown key"),
        ("architectures: [small_cnn]\nrecipes: [standard]\ntrain: {epoch: 3}\n", "train.epoch", "unknown key"),
        ("architectures: [small_cnn]\nrecipes: [standard]\ntrain: {epochs: ten}\n", "train.epochs", "integer"),
        ("architectures: [small_cnn]\nrecipes: [standard]\ntrain: {epochs: 0}\n", "train.epochs", "greater than 0"),
        ("architectures: [small_cnn]\nrecipes: [{name: pgd_at, eps: abc}]\n", "recipes[0].eps", "8/255"),
        ("architectures: [small_cnn]\nrecipes: [{name: pgd_at, eps: -0.1}]\n", "recipes[0].eps", "greater than or equal"),
        ("architectures: [small_cnn]\nrecipes: [{name: pgd_at, eps: 3}]\n", "recipes[0].eps", "at most 1"),
        ("architectures: [small_cnn]\nrecipes: [{name: pgd_at}]\n", "recipes[0].eps", "missing"),
        ("architectures: [small_cnn]\nrecipes: [{name: pgd_at, eps: 0.1, beta: 6}]\n", "recipes[0].beta", "unknown key"),
        ("architectures: [small_cnn]\nrecipes: [standard]\ndata: {name: imagenett}\n", "data.name", "valid data sets"),
        ("architectures: [no_such_net]\nrecipes: [standard]\n", "architectures[0]", "valid models"),
        ("architectures: [{name: small_cnn, options: {depht: 3}}]\nrecipes: [standard]\n", "architectures[0]", "depht"),
        ("architectures: [small_cnn]\nrecipes: [magic]\n", "recipes[0]", "'magic'"),
        ("architectures: [small_cnn]\nrecipes: [standard]\nevaluation: {attacks: [cw]}\n", "evaluation.attacks[0]", "'cw'"),
        ("architectures: [small_cnn]\nrecipes: [standard]\nevaluation: {attacks: [{name: pgd, loss: hinge}]}\n",
         "evaluation.attacks[0].loss", "ce"),
        ("architectures: [small_cnn]\nrecipes: [standard]\nevaluation: {attacks: [{name: pgd, norm: l2}]}\n",
         "evaluation.attacks[0]", "eps_l2"),
        ("architectures: [small_cnn]\nrecipes: [standard]\nevaluation: {attacks: [fgsm, fgsm]}\n", "evaluation.attacks[1]", "label"),
        ("architectures: [small_cnn]\nrecipes: [standard, standard]\n", "recipes[1]", "twice"),
        ("recipes: [standard]\n", "architectures", "missing"),
        ("architectures: []\nrecipes: [standard]\n", "architectures", "at least 1"),
        ("architectures: [small_cnn]\nrecipes: [{name: standard, train: {epochs: -1}}]\n", "recipes[0].train.epochs", "greater than 0"),
        ("name: 'a b'\narchitectures: [small_cnn]\nrecipes: [standard]\n", "name", "letters"),
        ("architectures: [small_cnn]\nrecipes: [standard]\ndata: {options: {image_size: 3}}\n", "data.options.image_size", "unknown option"),
        ("architectures: [small_cnn]\nrecipes: [standard]\nprobes: {lipschitz: {kinds: [loss, magic]}}\n",
         "probes.lipschitz.kinds[1]", "loss"),
    ],
)
def test_error_paths_name_file_and_field(tmp_path, text, field, words):
    e = error_of(tmp_path, text)
    line = e.one_line()
    assert "\n" not in line
    assert line.startswith(str(tmp_path / "s.yaml") + ": "), line
    assert e.field == field, line
    assert words in line, line


def test_yaml_syntax_error_gives_line(tmp_path):
    e = error_of(tmp_path, "architectures: [small_cnn\nrecipes: [standard]\n")
    assert "invalid YAML" in e.message and "line" in (e.field or "")


def test_not_a_mapping(tmp_path):
    e = error_of(tmp_path, "- a\n- b\n")
    assert "mapping" in e.message


def test_missing_file(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")


def test_extends_merges_and_overrides(tmp_path):
    write(tmp_path, MINIMAL + "train: {epochs: 7, lr: 0.3}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ntrain: {epochs: 2}\nseed: 5\n", "child.yaml")
    s = load_study(child)
    assert s.name == "child"
    assert s.train.epochs == 2 and s.train.lr == 0.3 and s.seed == 5
    assert len(s.recipes) == 2


def test_extends_shipped_quickstart(tmp_path):
    child = tmp_path / "q2.yaml"
    child.write_text(f"extends: {ROOT / 'studies' / 'quickstart.yaml'}\ntrain: {{epochs: 1}}\n")
    s = load_study(child)
    assert s.train.epochs == 1 and s.data.name == "digits"


def test_extends_errors(tmp_path):
    e = error_of(tmp_path, "extends: missing.yaml\n")
    assert e.field == "extends" and "no such study file" in e.message
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(StudyError, match="cycle"):
        load_study(tmp_path / "a.yaml")


def test_overrides(tmp_path):
    p = write(tmp_path, MINIMAL)
    s = load_study(p, ["train.epochs=3", "evaluation.eps=[0.1, '4/255']", "data.limit_train=100"])
    assert s.train.epochs == 3 and s.data.limit_train == 100
    assert s.evaluation.eps == pytest.approx((0.1, 4 / 255))
    with pytest.raises(StudyError, match="key=value"):
        load_study(p, ["train.epochs"])
    with pytest.raises(StudyError) as info:
        load_study(p, ["train.epochs=zero"])
    assert info.value.field == "train.epochs"


def test_frozen_and_roundtrip(tmp_path):
    s = load_study(write(tmp_path, MINIMAL))
    with pytest.raises(Exception):
        s.seed = 3  # type: ignore[misc]
    again = study_from_dict(s.to_dict())
    assert again == s and again.digest() == s.digest()


def test_schema_is_json_and_forbids_unknown_keys():
    schema = study_schema()
    json.dumps(schema)
    assert schema["additionalProperties"] is False
    assert "extends" in schema["properties"]
    # a study trains architectures × recipes, loads models, or both: neither list is required alone
    assert {"architectures", "recipes", "models", "pairs"} <= set(schema["properties"])
    assert not {"architectures", "models"} & set(schema.get("required", []))


def test_recipe_registry_matches_schema():
    from workbench.study import RECIPE_CONFIGS
    from workbench.training import RECIPES

    assert sorted(RECIPE_CONFIGS) == RECIPES.names()


def test_attack_registry_matches_schema():
    from workbench.attacks import ATTACKS
    from workbench.study import ATTACK_CONFIGS

    assert sorted(ATTACK_CONFIGS) == ATTACKS.names()
