"""The recipe loader: inheritance, typed dotted overrides, and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pfanet_cli.cli import main
from pfanet_cli.config import MAX_RECIPE_BYTES, Recipe, dump_recipe, load_recipe, recipe_to_dict, valid_keys
from pfanet_cli.errors import UsageError
from tests.helpers import TINY, error_line

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_paper_settings():
    recipe = load_recipe(None)
    assert recipe.model.backbone == "resnet50" and recipe.model.last_stride == 1
    assert (recipe.joint.ids_per_batch, recipe.joint.images_per_id) == (9, 4)
    assert (recipe.joint.lr_backbone, recipe.joint.lr_head, recipe.joint.lr_gan) == (0.02, 0.2, 2e-4)
    weights = recipe.joint.loss
    assert (weights.gen_adv, weights.disc, weights.cls_gan, weights.tri_gan, weights.cls_feat,
            weights.tri_feat) == (1.0, 1.0, 0.1, 0.1, 1.0, 1.0)
    assert recipe.joint.resolved_margin() == 1.0


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "name: base\nmodel:\n  bng: true\n  mmm: true\njoint:\n  lr_gan: 2e-4\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nname: child\nmodel:\n  bng: false\n")
    recipe = load_recipe(child, ["joint.iterations=7", "joint.lr_head=1e-1", "model.mmm=false",
                                 "joint.triplet_distance=euclidean", "data.root=/x/y"])
    assert recipe.name == "child"
    assert recipe.model.bng is False and recipe.model.mmm is False
    assert recipe.joint.iterations == 7 and recipe.joint.lr_head == pytest.approx(0.1)
    assert recipe.joint.lr_gan == pytest.approx(2e-4)  # PyYAML reads 2e-4 as a string; it is coerced
    assert recipe.joint.resolved_margin() == 0.3
    assert recipe.data.root == "/x/y"


def test_dump_round_trips(tmp_path):
    recipe = load_recipe(None, ["model.backbone=resnet18", "joint.triplet_margin=0.5"])
    path = write(tmp_path / "resolved.yaml", dump_recipe(recipe))
    assert recipe_to_dict(load_recipe(path)) == recipe_to_dict(recipe)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.bgn=false", "unknown recipe key 'model.bgn' in defaults + overrides (did you mean 'model.bng'?)"),
        ("joint.lr_bakcbone=0.1", "did you mean 'joint.lr_backbone'?"),
        ("lr_head=0.1", "did you mean 'joint.lr_head'?"),
        ("joint.lr_head=-0.1", "'joint.lr_head' in defaults + overrides: -0.1 must be > 0"),
        ("data.height=100", "must be a positive multiple of 16"),
        ("model.dropout=1.5", "must be in [0, 1)"),
        ("model.backbone=resnet101", "is not one of resnet18, resnet34, resnet50"),
        ("joint.iterations=ten", "expected int, got 'ten'"),
        ("joint.iterations=1.5", "expected int"),
        ("model.bng=maybe", "expected bool"),
        ("model=3", "must be a mapping"),
        ("joint.loss.cls_gan.x=1", "is a value, not a section"),
    ],
)
def test_invalid_overrides_name_the_key(override, message):
    with pytest.raises(UsageError) as info:
        load_recipe(None, [override])
    assert message in str(info.value)


def test_override_without_equals_sign():
    with pytest.raises(UsageError, match="must look like key=value"):
        load_recipe(None, ["joint.iterations"])


def test_typo_in_a_file_names_the_file_and_closest_key(tmp_path):
    path = write(tmp_path / "r.yaml", "joint:\n  warmup_iteration: 5\n")
    with pytest.raises(UsageError, match=r"unknown recipe key 'joint.warmup_iteration' in .*r.yaml "
                                         r"\(did you mean 'joint.warmup_iterations'\?\)"):
        load_recipe(path)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="line 2 is not valid YAML"):
        load_recipe(write(tmp_path / "bad.yaml", "a: 1\n b: [\n"))
    with pytest.raises(UsageError, match="mapping of keys at the top level"):
        load_recipe(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(UsageError, match="includes itself"):
        load_recipe(write(tmp_path / "loop.yaml", "base: loop.yaml\n"))


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path / "evil.yaml", f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UsageError, match=r"evil.yaml line 1 uses the Python tag !!python/object/apply:os.system; "
                                         "recipes are plain YAML and Python tags are never constructed"):
        load_recipe(path)
    assert not marker.exists()


def test_valid_keys_are_dotted_leaves():
    keys = valid_keys()
    assert "joint.loss.tri_feat" in keys and "model.bng" in keys and "joint" not in keys
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert yaml.safe_load(dump_recipe(recipe))["name"] == recipe.name


def test_bundled_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("sysu_bng.yaml").name == "sysu_bng"
    assert load_recipe("recipes/sysu_mmm.yaml").name == "sysu_mmm"
    assert load_recipe("sysu_baseline").model.bng is False
    with pytest.raises(UsageError, match="bundled recipe: .*sysu_pfanet.yaml"):
        load_recipe("nope.yaml")


def test_an_unquoted_off_is_the_choice_off():
    """YAML reads ``off`` as false; ``train.amp=off`` on the command line means the choice."""
    assert load_recipe(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(UsageError, match="train.amp.*True is not one of auto, off, bf16, fp16"):
        load_recipe(None, ["train.amp=on"])


def test_a_ten_megabyte_string_is_refused_before_it_is_parsed(tmp_path, capsys):
    path = write(tmp_path / "huge.yaml", "name: " + "x" * 10_000_000 + "\n")
    assert main(["train-gan", str(path), "--dry-run"]) == 2
    assert f"recipe {path.resolve()} is 10,000,007 bytes; a recipe is a small YAML file (at most " \
           f"{MAX_RECIPE_BYTES:,} bytes)" in error_line(capsys)
    assert main(["train-gan", str(TINY), "--dry-run", "data.root=" + "d" * 5000]) == 2
    assert "recipe key 'data.root' in" in error_line(capsys)


def test_python_tags_in_overrides_and_deep_nesting_are_usage_errors(capsys):
    assert main(["train-gan", str(TINY), "--dry-run", "model.bng=!!python/object/apply:os.getcwd []"]) == 2
    assert "uses the Python tag !!python/object/apply:os.getcwd" in error_line(capsys)
    assert main(["train-gan", str(TINY), "--dry-run", "model.bng=" + "[" * 20000]) == 2
    assert "nests too deeply to be a recipe" in error_line(capsys)


YAML_PIECES = st.sampled_from(["1", "-2", "0.5", "1e-3", ".nan", ".inf", "true", "~", "null", "''", "[1, 2]",
                               "{a: 1}", "[", "{", "!!python/object:os.system {}", "!!binary aGk=", "&a [*a]",
                               "*b", "'x", "\"\\u0000\"", "resnet18", "1" * 40, "- a", ": :", "? [a]: b",
                               "[" * 3000])
KEYS = st.one_of(st.sampled_from(valid_keys() + ["model", "train", "joint.loss", "", ".", "a..b", "model."]),
                 st.text(max_size=20))
OVERRIDES = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", KEYS, st.one_of(YAML_PIECES, st.text(max_size=30))),
    st.text(max_size=30)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(overrides=OVERRIDES)
def test_any_overrides_give_a_recipe_or_a_usage_error(overrides):
    try:
        recipe = load_recipe(TINY, overrides)
    except UsageError as exc:
        assert str(exc)
        return
    assert isinstance(recipe, Recipe)
    dump_recipe(recipe)  # what config.yaml will hold
