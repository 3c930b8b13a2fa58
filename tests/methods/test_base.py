"""The config base (declared field checks) and the checked module selection."""

import dataclasses

import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.methods.base import (
    CONFIGS,
    POSITIVE,
    CompressContext,
    MethodConfig,
    between,
    one_of,
    param,
    select,
    select_modules,
)
from modelpress.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class _Cfg(MethodConfig):
    name = "test-cfg"
    bits: int = param(4, between(2, 8))
    ratio: float = param(0.5, between(0, 1, hi_open=True))
    group_size: int | None = param(None, POSITIVE)
    mode: str = param("a", one_of("a", "b"))
    flag: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    widths: tuple[int, ...] = param((2, 4), between(1, 8), elements=True)

    def validate(self) -> None:
        if self.mode == "b" and self.group_size is None:
            raise self.error("mode 'b' needs a group_size")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 9}, "test-cfg: bits must be an integer in [2, 8], got 9"),
        ({"bits": "4"}, "test-cfg: bits must be an integer, got '4'"),
        ({"bits": True}, "test-cfg: bits must be an integer, got True"),
        ({"bits": 4.0}, "test-cfg: bits must be an integer, got 4.0"),
        ({"ratio": 1.0}, "test-cfg: ratio must be a number in [0, 1), got 1.0"),
        ({"ratio": "x"}, "test-cfg: ratio must be a number, got 'x'"),
        ({"group_size": 0}, "test-cfg: group_size must be a positive integer, got 0"),
        ({"group_size": "8"}, "test-cfg: group_size must be an integer or null, got '8'"),
        ({"mode": "c"}, "test-cfg: mode must be one of a, b, got 'c'"),
        ({"flag": "yes"}, "test-cfg: flag must be true or false, got 'yes'"),
        ({"include": [1, 2]}, "test-cfg: include must be a list of strings, got [1, 2]"),
        (
            {"widths": [2, 9]},
            "test-cfg: widths must be a list whose every element is an integer in [1, 8], got [2, 9]",
        ),
        ({"mode": "b"}, "test-cfg: mode 'b' needs a group_size"),
    ],
)
def test_declared_checks_have_one_message_style(kwargs, message):
    with pytest.raises(mp.ConfigError) as e:
        _Cfg(**kwargs)
    assert str(e.value) == message


def test_int_is_a_fine_number_and_tuples_normalise():
    c = _Cfg(ratio=0, include="*.attention.*", exclude=["a", "b"])
    assert c.ratio == 0 and c.include == ("*.attention.*",) and c.exclude == ("a", "b")
    assert hash(c) == hash(_Cfg(ratio=0, include=("*.attention.*",), exclude=("a", "b")))


def test_every_registered_config_validates_through_the_base():
    """No config bypasses the base checks with an __post_init__ of its own, and each
    rejects a string where it wants a list of patterns by taking it as one pattern."""
    for name, cls in CONFIGS.items():
        assert "__post_init__" not in vars(cls), f"{name} overrides __post_init__ (use validate)"
        fields = {f.name for f in dataclasses.fields(cls)}
        if {"include", "exclude"} <= fields and all(
            f.default is not dataclasses.MISSING for f in dataclasses.fields(cls)
        ):
            c = cls(include="*.dense", exclude="lm_head")
            assert c.include == ("*.dense",) and c.exclude == ("lm_head",), name


def test_yaml_string_patterns_are_one_pattern(tiny_bert, tiny_llama):
    """The review's YAML bug: a string include was iterated character by character."""
    recipe = Recipe.from_yaml(
        "methods:\n  - method: weight-only\n    bits: 8\n    include: '*.attention.*'\n"
    )
    model = mp.compress(tiny_bert, recipe)
    done = {n for n, m in model.named_modules() if hasattr(m, "weight") and hasattr(m.weight, "decode")}
    assert done and all(".attention." in n for n in done)
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, nn.Linear)
    # exclude: a string excludes exactly that module, not "everything" or "nothing"
    recipe = Recipe.from_yaml("methods:\n  - method: weight-only\n    bits: 8\n    exclude: lm_head\n")
    lm = mp.compress(tiny_llama, recipe)
    assert isinstance(lm.lm_head, nn.Linear)
    assert hasattr(lm.model.layers[0].mlp.up_proj.weight, "decode")
    recipe = Recipe.from_yaml("methods:\n  - method: weight-only\n    bits: 8\n    exclude: '*classifier*'\n")
    m2 = mp.compress(tiny_bert, recipe)
    assert isinstance(m2.classifier, nn.Linear) and hasattr(m2.bert.pooler.dense.weight, "decode")


def test_a_pattern_that_matches_nothing_is_an_error_with_the_nearest_names(tiny_bert):
    with pytest.raises(
        mp.ConfigError, match=r"weight-only: exclude pattern 'clasifier' matches no module.*classifier"
    ):
        mp.compress(tiny_bert, mp.CONFIGS.get("weight-only")(bits=8, exclude=("clasifier",)))
    with pytest.raises(mp.ConfigError, match="include pattern 'lm_head' matches no module"):
        mp.compress(tiny_bert, mp.CONFIGS.get("weight-only")(bits=8, include=("lm_head",)))


def test_select_and_select_modules():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    cfg = _Cfg(include=("2.*",))
    assert [n for n, _ in select(model, cfg, (nn.Linear,))] == ["2.0"]
    with pytest.raises(mp.ConfigError, match="no Conv2d layer matched"):
        select(model, _Cfg(), (nn.Conv2d,))
    assert [n for n, _ in select_modules(model, (nn.Linear,), "*", "0")] == ["2.0"]


def test_require_data_says_what_is_missing():
    ctx = CompressContext()
    with pytest.raises(mp.ConfigError, match="gptq needs calibration data: pass data= with batches"):
        ctx.require_data("gptq")
    ctx = CompressContext(data=object())
    with pytest.raises(mp.ConfigError, match="got a object"):
        ctx.require_data("gptq")

    class Loader:
        def batches(self, split, batch_size, *, shuffle_seed=None):
            return [torch.zeros(1)]

        def loss(self, model, batch):
            return torch.zeros(())

    ctx = CompressContext(data=Loader())
    assert ctx.require_data("gptq") is ctx.data
    with pytest.raises(mp.ConfigError, match="score"):
        ctx.require_data("prune", "to fine-tune", score=True)
