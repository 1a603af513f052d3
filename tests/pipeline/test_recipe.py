import json
from pathlib import Path

import pytest

from keras_llmopt._src.pipeline.recipe import STAGE_SCHEMAS, load_recipe, parse_recipe

pytestmark = pytest.mark.backend_agnostic

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"


def test_defaults_are_filled_and_round_trip():
    recipe = parse_recipe(
        {
            "name": "r",
            "stages": [
                {"prune": {"final_sparsity": 0.75, "m_by_n": [2, 4]}},
                "strip",
                {"export": {"format": "tflite", "quantization": "dynamic_int8"}},
            ],
        }
    )
    assert [s.name for s in recipe.stages] == ["prune", "strip", "export"]
    prune = recipe.stages[0].params
    assert prune["final_sparsity"] == 0.75 and prune["m_by_n"] == [2, 4]
    assert set(prune) == set(STAGE_SCHEMAS["prune"])
    assert prune["steps"] == STAGE_SCHEMAS["prune"]["steps"][1]
    assert parse_recipe(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    "stages, where, fragment",
    [
        ([{"shrink": {}}], "stage 0", "accepted: ['cluster', 'evaluate'"),
        ([{"prune": {"sparsity": 0.5}}], "stage 0 (prune), key `sparsity`", "unknown key"),
        (["strip", {"prune": {"final_sparsity": 1.5}}], "stage 1 (prune)", "final_sparsity=1.5"),
        ([{"prune": {"final_sparsity": "half"}}], "stage 0 (prune)", "expected a number"),
        ([{"prune": {"steps": 0}}], "key `steps`", "accepted: [1, inf]"),
        ([{"prune": {"steps": 2.5}}], "key `steps`", "expected an integer"),
        (
            [{"prune": {"initial_sparsity": 0.6, "final_sparsity": 0.5}}],
            "key `initial_sparsity`",
            "must be below final_sparsity",
        ),
        ([{"prune": {"m_by_n": [4, 2]}}], "key `m_by_n`", "m must be below n"),
        ([{"prune": {"block_size": [1]}}], "key `block_size`", "two positive integers"),
        ([{"prune": {"targets": [3]}}], "key `targets`", "layer path pattern"),
        ([{"export": {"format": "tflite", "quantization": "int2"}}], "key `quantization`", "int8"),
        ([{"export": {"format": "onnx", "sparse": True}}], "stage 0 (export)", "'tflite' only"),
        ([{"export": {"name": "../x"}}], "key `name`", "not a path"),
        ([{"export": {"verify": "yes"}}], "key `verify`", "true or false"),
        ([{"quantize": {"steps": 0}}], "stage 0 (quantize), key `steps`", "calibrate"),
        ([{"quantize": {"calibrate": "kl"}}], "key `calibrate`", "'entropy'"),
        ([{"cluster": {"number_of_clusters": 1}}], "key `number_of_clusters`", "[2, 65536]"),
        ([{"quantize": {}}, {"prune": {}}], "stage 1 (prune)", "before quantize"),
        ([{"prune": {}}, {"prune": {}}], "stage 1 (prune)", "appears twice"),
        (
            [{"quantize": {}}, {"export": {"quantization": "dynamic_int8"}}],
            "stage 1 (export), key `quantization`",
            "'int8' or 'int16x8'",
        ),
        ([{"export": {"name": "a"}}, {"export": {"name": "a"}}], "stage 1", "'a.tflite'"),
        ([{"prune": {}, "strip": {}}], "stage 0", "exactly one stage name"),
        ([{"strip": {"all": True}}], "stage 0 (strip), key `all`", "no keys"),
    ],
)
def test_bad_recipes_name_stage_and_key(stages, where, fragment):
    with pytest.raises((ValueError, TypeError)) as info:
        parse_recipe({"stages": stages})
    message = str(info.value)
    assert where in message, message
    assert fragment in message, message


def test_top_level_errors():
    with pytest.raises(ValueError, match="unknown top-level key.*'steps'"):
        parse_recipe({"steps": []})
    with pytest.raises(ValueError, match="`stages` must be a list"):
        parse_recipe({"stages": {"prune": {}}})
    with pytest.raises(ValueError, match="empty"):
        parse_recipe({"stages": []})
    with pytest.raises(TypeError, match="mapping"):
        parse_recipe("prune")


def test_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("stages:\n  - prune: {final_sparsity: 0.5, steps: 10}\n  - strip\n")
    recipe = load_recipe(yaml_file)
    assert recipe.name == "r" and recipe.stages[0].params["steps"] == 10
    json_file = tmp_path / "j.json"
    json_file.write_text(json.dumps({"name": "mine", "stages": [{"evaluate": {"windows": 4}}]}))
    assert load_recipe(json_file).name == "mine"


def test_yaml_is_parsed_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("stages: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_recipe(evil)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")
    other = tmp_path / "r.toml"
    other.write_text("x = 1")
    with pytest.raises(ValueError, match="accepted: .yaml, .yml, .json"):
        load_recipe(other)
    broken = tmp_path / "b.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_recipe(broken)


@pytest.mark.parametrize("name", ["prune50_int8.yaml", "qat_int8.yaml"])
def test_shipped_recipes_are_valid(name):
    recipe = load_recipe(RECIPES / name)
    assert recipe.name == name.split(".")[0]
    assert recipe.stages[-1].name == "export"
