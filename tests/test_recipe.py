import pytest

import modelpress as mp
from modelpress.methods.base import CONFIGS, PRESETS, matches
from modelpress.recipe import Recipe, resolve_methods


@pytest.mark.parametrize("name", CONFIGS.names())
def test_every_config_roundtrips_yaml(name):
    cfg = CONFIGS.get(name)()
    r = Recipe([cfg])
    assert Recipe.from_yaml(r.to_yaml()) == r


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_builds_a_valid_recipe(name):
    r = Recipe(PRESETS.get(name).build())
    assert Recipe.from_yaml(r.to_yaml()) == r


def test_yaml_with_patterns(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("methods:\n  - method: int8-dynamic\n    exclude: ['*classifier*']\n    embeddings: false\n")
    [(label, r)] = resolve_methods(str(p))
    assert label == "r"
    assert r.methods == (mp.Int8DynamicConfig(exclude=("*classifier*",), embeddings=False),)


def test_bad_recipes(tmp_path):
    with pytest.raises(mp.ConfigError, match=r"unknown field.*bitz.*'int8-dynamic'"):
        Recipe.from_yaml("- method: int8-dynamic\n  bitz: 4\n")
    with pytest.raises(mp.ConfigError, match="unknown method 'magic'"):
        Recipe.from_yaml("- method: magic\n")
    with pytest.raises(mp.ConfigError, match="'method' key"):
        Recipe.from_yaml("- dtype: float16\n")
    with pytest.raises(mp.ConfigError, match="dtype must be one of"):
        Recipe.from_yaml("- method: cast\n  dtype: float8\n")
    with pytest.raises(mp.ConfigError, match="unknown benchmark method 'int9'"):
        resolve_methods("fp32,int9")
    with pytest.raises(mp.ConfigError, match="recipe file not found"):
        resolve_methods(str(tmp_path / "missing.yaml"))
    with pytest.raises(mp.ConfigError, match="not valid YAML"):
        Recipe.from_yaml("- method: [")


def test_patterns():
    assert matches("bert.encoder.layer.0.attention.self.query", ["*"], [])
    assert not matches("classifier", ["*"], ["classifier"])
    assert matches("a.b.c", ["a.*"], ["*.d"])
