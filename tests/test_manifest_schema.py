"""The manifest schema is declared once (modelpress/manifest_schema.py): every saved
manifest fits it, the docs are generated from it, and it is strict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import modelpress as mp
from modelpress import manifest_schema
from modelpress.models.lenet import LeNet300100

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_table_and_json_schema_are_generated_from_the_schema():
    assert manifest_schema.main(["--docs", str(DOCS)]) == 0, "run python tools/manifest_docs.py --write"
    assert json.loads((DOCS / "manifest.schema.json").read_text())["$id"] == "modelpress-manifest-v1"


def test_saved_manifests_fit_the_schema(tmp_path):
    torch.manual_seed(0)
    path = mp.save(mp.compress(LeNet300100(hidden=(16, 8)).eval(), "int4-g128"), tmp_path / "a")
    m = manifest_schema.validate(json.loads((path / "manifest.json").read_text()))
    assert m.digests is not None and m.digests.algorithm == "xxh3-128"
    assert set(m.modules) == {"fc1", "fc2", "fc3"}


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (lambda m: m["modules"]["fc1"].update(version=True), "'modules.fc1.version' must be an integer"),
        (lambda m: m["modules"]["fc1"].update(version=1.0), "'modules.fc1.version' must be an integer"),
        (
            lambda m: m["tensors"]["fc1.bias"].update(shape=[16.0]),
            "'tensors.fc1.bias.shape.0' must be an integer",
        ),
        (lambda m: m["tensors"]["fc1.bias"].update(extra=1), "'tensors.fc1.bias.extra' is not a known key"),
        (lambda m: m["tensors"].update({"a..b": m["tensors"]["fc1.bias"]}), "'tensors.a..b.[key]'"),
        (lambda m: m["base"].update(config={}), "a modelpress base holds 'args', not a 'config'"),
        (lambda m: m["digests"].update(manifest="ab"), "xxh3-128 digests are 32 hex digits"),
        (lambda m: m.update(aliases=[]), "'aliases' must be an object"),
    ],
)
def test_the_schema_is_strict(tmp_path, edit, phrase):
    torch.manual_seed(0)
    path = mp.save(mp.compress(LeNet300100(hidden=(16, 8)).eval(), "int8-dynamic"), tmp_path / "a")
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    with pytest.raises(ValueError, match=None) as e:
        manifest_schema.validate(m)
    assert phrase in str(e.value)
