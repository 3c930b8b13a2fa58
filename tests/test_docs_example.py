"""The "add a weight method" example of docs/architecture.md runs as written."""

import re
from pathlib import Path

import torch

import modelpress as mp
from modelpress.methods.base import CONFIGS, HANDLERS, PRESETS


def test_add_a_weight_method_example(tmp_path):
    text = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    code = re.search(r"## Adding a weight method.*?```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    try:
        exec(compile(code, "docs/architecture.md", "exec"), ns)
        from modelpress.models.lenet import LeNet300100

        torch.manual_seed(0)
        net = LeNet300100()
        q = mp.compress(net, "my-round-4")
        assert type(q.fc1).__name__ == "DecodedLinear"
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(mp.load(mp.save(q, tmp_path / "a"))(x), q(x))
        try:
            ns["MyRoundConfig"](bits=9)
        except mp.ConfigError as e:
            assert str(e) == "my-round: bits must be an integer in [2, 8], got 9"
        else:
            raise AssertionError("bits=9 accepted")
    finally:  # leave the registries as they were
        cls = CONFIGS._items.pop("my-round", None)
        HANDLERS.pop(cls, None)
        PRESETS._items.pop("my-round-4", None)
