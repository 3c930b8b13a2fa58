"""Artifacts you can trust (issue 14): every stored byte is verified, format metadata and
config dims are checked against the stored tensors, nothing reaches the network, memory is
estimated before it is allocated, and bad input is one ``ModelpressError`` sentence."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import struct
import time
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors import safe_open
from torch import nn

import modelpress as mp
from modelpress.api import MANIFEST_FILE, WEIGHTS_FILE, manifest_digest, tensor_digest
from modelpress.models.architectures import build_base, check_config, check_config_keys, register_architecture


def _lenet(hidden=(16, 8)) -> nn.Module:
    from modelpress.models.lenet import LeNet300100

    torch.manual_seed(0)
    return LeNet300100(hidden=hidden).eval()


def _x() -> torch.Tensor:
    return torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))


def _edit(path: Path, fn, *, reseal: bool = True) -> None:
    """Edit the manifest; ``reseal``: record its digest again (an edit on purpose, which
    reaches the checks behind the digest)."""
    m = json.loads((path / MANIFEST_FILE).read_text())
    fn(m)
    if reseal and "digests" in m:
        m["digests"]["manifest"] = manifest_digest(m)
    (path / MANIFEST_FILE).write_text(json.dumps(m))


def _header(path: Path) -> tuple[int, dict]:
    raw = (path / WEIGHTS_FILE).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


# -- digests -------------------------------------------------------------------------------


def test_save_records_a_digest_per_tensor_and_of_the_manifest(tmp_path):
    path = mp.save(mp.compress(_lenet(), "int8-dynamic"), tmp_path / "a")
    m = json.loads((path / MANIFEST_FILE).read_text())
    assert list(m)[-1] == "digests" and m["digests"]["algorithm"] == "xxh3-128"
    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        assert set(m["digests"]["tensors"]) == set(f.keys())
        for key in f.keys():
            t = f.get_tensor(key)
            assert m["digests"]["tensors"][key] == tensor_digest(t)
            assert tensor_digest(t) == xxhash.xxh3_128(t.contiguous().view(torch.uint8).numpy()).hexdigest()
            assert len(tensor_digest(t)) == 32
    assert m["digests"]["manifest"] == manifest_digest(m)


def test_artifacts_with_sha256_digests_of_older_versions_are_still_verified(tmp_path):
    path = mp.save(mp.compress(_lenet(), "int8-dynamic"), tmp_path / "a")
    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        sha = {
            k: hashlib.sha256(f.get_tensor(k).contiguous().view(torch.uint8).numpy()).hexdigest()
            for k in f.keys()
        }

    def to_sha256(m):
        m["digests"] = {"algorithm": "sha256", "tensors": sha}

    _edit(path, to_sha256)
    m = json.loads((path / MANIFEST_FILE).read_text())
    assert m["digests"]["manifest"] == hashlib.sha256(mp.api._canonical(m)).hexdigest()
    torch.testing.assert_close(mp.load(path)(_x()), mp.load(tmp_path / "a")(_x()))
    key = next(iter(sha))
    _edit(path, lambda m: m["digests"]["tensors"].update({key: "0" * 64}))
    with pytest.raises(mp.ArtifactError, match=f"tensor '{key}'.*does not match its digest"):
        mp.load(path)
    _edit(path, lambda m: m["digests"].update({"algorithm": "md5"}))
    with pytest.raises(
        mp.ArtifactError, match=re.escape("'digests.algorithm' should be 'xxh3-128' or 'sha256'")
    ):
        mp.load(path)


def test_every_flipped_data_byte_is_caught_naming_the_tensor(tmp_path):
    path = mp.save(mp.compress(_lenet(), "int4-g128"), tmp_path / "a")
    n, header = _header(path)
    raw = bytearray((path / WEIGHTS_FILE).read_bytes())
    for key, info in header.items():
        if key == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        if hi == lo:
            continue
        at = 8 + n + (lo + hi) // 2
        bad = bytearray(raw)
        bad[at] ^= 0x10
        (path / WEIGHTS_FILE).write_bytes(bytes(bad))
        with pytest.raises(mp.ArtifactError, match=f"tensor '{key}' .* does not match its digest"):
            mp.load(path)
    (path / WEIGHTS_FILE).write_bytes(bytes(raw))
    assert isinstance(mp.load(path), nn.Module)


def test_swapped_header_offsets_of_same_shape_tensors_are_caught(tmp_path):
    path = mp.save(_lenet(hidden=(16, 16)), tmp_path / "a")  # fc2.weight (16, 16): swap with
    n, header = _header(path)
    a, b = "fc1.bias", "fc2.bias"  # two (16,) float32 tensors
    header[a]["data_offsets"], header[b]["data_offsets"] = (
        header[b]["data_offsets"],
        header[a]["data_offsets"],
    )
    raw = (path / WEIGHTS_FILE).read_bytes()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))
    assert len(text) == n
    (path / WEIGHTS_FILE).write_bytes(raw[:8] + text + raw[8 + n :])
    with pytest.raises(mp.ArtifactError, match="does not match its digest"):
        mp.load(path)


def test_any_manifest_edit_breaks_its_digest(tmp_path):
    path = mp.save(mp.compress(_lenet(), "cluster-4bit"), tmp_path / "a")

    def f(m):
        m["modules"]["fc1"]["formats"]["weight"]["meta"]["bits"] = 1

    _edit(path, f, reseal=False)
    with pytest.raises(mp.ArtifactError, match="does not match its digest: the manifest was altered"):
        mp.load(path)


def test_artifacts_without_digests_still_load_with_a_warning(tmp_path, caplog):
    model = _lenet()
    path = mp.save(model, tmp_path / "old")
    _edit(path, lambda m: m.pop("digests"))
    with caplog.at_level(logging.WARNING, logger="modelpress.api"):
        loaded = mp.load(path)
    assert "no integrity digests" in caplog.text
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))


# -- format metadata against the stored bytes (edits that carry a valid digest) ---------------


def _fmt(m, name="fc1"):
    return m["modules"][name]["formats"]["weight"]


@pytest.mark.parametrize(
    ("preset", "edit", "message"),
    [
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(bits=1), "codebook.*shape"),
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(bits=9), "bits must be in 1..8"),
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(bits=True), "wrong type"),
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(n_codes=5), "n_codes"),
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(granularity="group", group_size=0), "group_size"),
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(coding="lz4"), "unknown code coding"),
        ("cluster-4bit", lambda m: _fmt(m)["meta"].update(evil="x"), "unexpected keyword"),
        ("cluster-4bit", lambda m: _fmt(m).update(shape=[16, 785]), "n_codes|shape"),
        ("cluster-4bit", lambda m: _fmt(m).update(format="nope"), "unknown tensor format 'nope'"),
        ("int4-g128", lambda m: _fmt(m)["meta"].update(group_size=0), "group_size must be a positive"),
        ("int4-g128", lambda m: _fmt(m)["meta"].update(group_size=5), "does not divide"),
        ("int4-g128", lambda m: _fmt(m)["meta"].update(bits=3), "qdata.*shape"),
        ("int4-g128", lambda m: _fmt(m)["meta"].update(bits=1), "bits must be in 2..8"),
        ("int4-g128", lambda m: _fmt(m).update(shape=[15, 784]), "shape"),
        ("int4-g128", lambda m: _fmt(m).update(shape=[16, 784, 1]), "2-D"),
        ("int8-dynamic", lambda m: _fmt(m).update(shape=[17, 784]), "shape"),
        (
            "int8-dynamic",
            lambda m: _fmt(m).update(version=True),
            "'modules.fc1.formats.weight.version' must be an integer",
        ),
        ("int8-dynamic", lambda m: m["modules"]["fc1"].pop("class"), "'modules.fc1.class' is missing"),
        (
            "int8-dynamic",
            lambda m: m["modules"]["fc1"].update({"class": "evil"}),
            "unknown compressed module",
        ),
        (
            "int8-dynamic",
            lambda m: m["modules"]["fc1"].update(formats=[]),
            "'modules.fc1.formats' must be an object",
        ),
        ("cluster-pq", lambda m: _fmt(m)["meta"].update(dim=0), "pq|dim"),
        ("cluster-pq", lambda m: _fmt(m)["meta"].update(bits=4), "codebook.*shape"),
        ("prune-50-oneshot", lambda m: _fmt(m)["meta"].update(n_values=3), "values.*shape"),
        ("prune-50-oneshot", lambda m: _fmt(m)["meta"].update(index_kind="relative4"), "index.*shape"),
    ],
)
def test_format_metadata_that_does_not_fit_the_stored_bytes_fails_at_load(tmp_path, preset, edit, message):
    """The issue's reproductions: ``bits`` 4 -> 1, ``group_size: 0``, a shape +-1 load and
    fail at the first forward unless the metadata is checked against the stored tensors."""
    recipe = [mp.CONFIGS.get("prune")(sparsity=0.5)] if preset == "prune-50-oneshot" else preset
    path = mp.save(mp.compress(_lenet(), recipe), tmp_path / "a")
    _edit(path, edit)
    with pytest.raises(mp.ArtifactError, match=message):
        mp.load(path)


def test_a_mask_popcount_that_disagrees_with_the_code_count_fails(tmp_path):
    """A value-level check: the mask (stored bytes) keeps another number of weights than
    ``n_codes`` says (tensor bytes edited and their digest recorded again)."""
    cfgs = [
        mp.CONFIGS.get("prune")(sparsity=0.5, storage="dense"),
        mp.CONFIGS.get("kmeans")(bits=2, sparsity="keep", max_iter=3),
    ]
    path = mp.save(mp.compress(_lenet(), cfgs), tmp_path / "a")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / WEIGHTS_FILE))
    key = "fc1.weight.mask"
    assert key in tensors
    tensors[key] = tensors[key] ^ 0x01  # flip one mask bit
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    _edit(path, lambda m: m["digests"]["tensors"].update({key: tensor_digest(tensors[key])}))
    with pytest.raises(mp.ArtifactError, match=r"the mask keeps .* but n_codes"):
        mp.load(path)


# -- config against the stored tensors, memory before allocation ------------------------------


def test_max_position_embeddings_beyond_the_weights_fails_at_once(tmp_path, tiny_bert):
    path = mp.save(tiny_bert, tmp_path / "a")
    for n in (2**26, 10**12):
        _edit(path, lambda m, n=n: m["base"]["config"].update(max_position_embeddings=n))
        t0 = time.perf_counter()
        with pytest.raises(
            mp.ArtifactError, match=r"position_embeddings.weight' as \[.*\], the artifact stores"
        ):
            mp.load(path)
        assert time.perf_counter() - t0 < 10


@register_architecture("test-big-buffer")
class _BigBuffer(nn.Module):
    """A layer whose constructor allocates a buffer sized by an argument (no stored tensor
    is of that size: only the memory estimate can catch it)."""

    def __init__(self, n: int = 8) -> None:
        super().__init__()
        self.n = n
        self.fc = nn.Linear(4, 4)
        self.register_buffer("table", torch.zeros(n), persistent=False)

    def arch_args(self) -> dict:
        return {"n": self.n}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.table[:1]


def test_memory_is_estimated_before_anything_is_allocated(tmp_path):
    path = mp.save(_BigBuffer(), tmp_path / "a")
    assert isinstance(mp.load(path), _BigBuffer)
    _edit(path, lambda m: m["base"]["args"].update(n=2**40))  # 4 TB of float32
    t0 = time.perf_counter()
    with pytest.raises(mp.ArtifactError, match=r"loading would allocate about 4,398,047 MB"):
        mp.load(path)
    assert time.perf_counter() - t0 < 10


# -- no network, no remote code -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"auto_map": {"AutoModel": "evil.Model"}}, "auto_map"),
        ({"text_config": {"auto_map": {"AutoModel": "evil.Model"}}}, r"text_config\.auto_map"),
        ({"trust_remote_code": True}, "trust_remote_code"),
        ({"backbone": "some-user/some-backbone", "use_timm_backbone": False}, "backbone by id"),
        ({"use_pretrained_backbone": True}, "pretrained backbone"),
        ({"use_timm_backbone": True}, "timm"),
        ({"backbone_config": {"model_type": "timm_backbone", "backbone": "hf-hub:u/m"}}, "backbone"),
        ({"attn_implementation": "kernels-community/flash-attn"}, "attention implementation"),
        ({"_attn_implementation": {"": "sdpa", "vision": "u/kernel"}}, "attention implementation"),
        ({"experts_implementation": "kernels-community/moe"}, "experts implementation"),
    ],
)
def test_config_keys_that_reach_the_network_are_refused(config, message):
    with pytest.raises(mp.ArtifactError, match=message):
        check_config(config)


def test_plain_configs_pass_the_network_check(tiny_bert, tiny_llama):
    for m in (tiny_bert, tiny_llama):
        check_config(m.config.to_dict())
    check_config(
        {
            "attn_implementation": "sdpa",
            "backbone_config": {"model_type": "timm_backbone", "backbone": "resnet50"},
        }
    )


# -- an allow-list of config keys per class ----------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"foo": [1, 2]}, "'foo' is not a BertConfig field and holds a list; refused"),
        ({"foo": {"a": 1}}, "'foo' is not a BertConfig field and holds an object; refused"),
        ({"foo": "some-user/some-model"}, "'foo' is not a BertConfig field and holds the string"),
        ({"foo": "hf-hub:u/m"}, "looks like a hub id or a path"),
        ({"foo": "/etc/passwd"}, "looks like a hub id or a path"),
        ({"rope_parameters": {"rope_type": "default"}}, "'rope_parameters' is not a BertConfig field"),
    ],
)
def test_an_unknown_config_key_holding_more_than_a_plain_scalar_is_refused(
    tmp_path, tiny_bert, extra, message
):
    path = mp.save(tiny_bert, tmp_path / "a")
    _edit(path, lambda m: m["base"]["config"].update(extra))
    with pytest.raises(mp.ArtifactError, match=re.escape(message)) as e:
        mp.load(path)
    assert str(e.value).startswith("manifest config key '")


def test_unknown_config_keys_holding_plain_scalars_and_known_keys_pass(tmp_path, tiny_bert):
    path = mp.save(tiny_bert, tmp_path / "a")
    extra = {"foo": 1, "bar": 2.5, "baz": None, "qux": True, "position_embedding_type": "absolute"}
    # keys PretrainedConfig reads (those of transformers 4 too) may hold objects and lists
    extra |= {"task_specific_params": {"summarization": {"num_beams": 4}}, "bad_words_ids": [[1]]}
    _edit(path, lambda m: m["base"]["config"].update(extra))
    x = torch.tensor([[101, 2023, 102]])
    with torch.no_grad():
        assert torch.equal(mp.load(path)(input_ids=x).logits, tiny_bert(input_ids=x).logits)


def test_sub_configs_are_checked_against_their_own_class():
    from transformers import LlavaConfig

    raw = LlavaConfig().to_dict()
    check_config_keys(LlavaConfig, raw)
    raw["text_config"]["evil"] = ["x"]
    with pytest.raises(
        mp.ArtifactError, match=r"'text_config\.evil' is not a LlamaConfig field and holds a list"
    ):
        check_config_keys(LlavaConfig, raw)
    raw = LlavaConfig().to_dict()
    raw["vision_config"]["evil"] = "u/m"
    with pytest.raises(mp.ArtifactError, match=r"'vision_config\.evil' is not a CLIPVisionConfig field"):
        check_config_keys(LlavaConfig, raw)


def test_every_config_modelpress_saves_passes_the_allow_list(tiny_bert, tiny_llama, minilm_dir):
    """Tiny BERT and Llama of the tests, MiniLM's packaged config and SmolLM2's GGUF config
    (as ``modelpress compress`` gets them) pass; their manifests' ``base`` is what is checked."""
    from transformers import BertForSequenceClassification, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from modelpress.models.architectures import describe_base
    from modelpress.models.sources import smollm2_source

    src = smollm2_source()
    raw = load_gguf_checkpoint(str(Path(src.path) / str(src.gguf_file)), return_tensors=False)["config"]
    with torch.device("meta"):
        smollm2 = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in raw.items() if not k.startswith("_")}))
        minilm = BertForSequenceClassification.from_pretrained(
            str(minilm_dir), device_map="meta", use_kernels=False
        )
    for model in (tiny_bert, tiny_llama, smollm2, minilm):
        base = describe_base(model)
        check_config_keys(type(model).config_class, base["config"])
        build_base(base, meta=True)


def test_a_detr_with_a_hub_backbone_never_calls_the_hub(tmp_path, tiny_bert, monkeypatch):
    """The issue's reproduction, on the manifest of a real artifact."""
    path = mp.save(tiny_bert, tmp_path / "a")

    def f(m):
        m["base"]["class"] = "DetrForObjectDetection"
        m["base"]["config"] = {"backbone": "some-user/some-backbone", "use_timm_backbone": False}

    _edit(path, f)
    import huggingface_hub

    def no_network(*a, **k):  # pragma: no cover - reached only if the check is gone
        raise AssertionError("load reached the hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_exists", no_network)
    with pytest.raises(mp.ArtifactError, match="backbone by id"):
        mp.load(path)


def test_the_base_model_is_built_with_the_hub_offline(monkeypatch):
    import huggingface_hub.constants as hub

    seen = []
    from modelpress.models.lenet import LeNet300100

    real_init = LeNet300100.__init__

    def spy(self, *a, **k):
        seen.append(hub.HF_HUB_OFFLINE)
        real_init(self, *a, **k)

    monkeypatch.setattr(LeNet300100, "__init__", spy)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    build_base({"library": "modelpress", "class": "lenet-300-100", "args": {}})
    assert seen == [True] and hub.HF_HUB_OFFLINE is False


# -- one error type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset", ["fp16", "bf16", "int8-dynamic", "int4-g128", "cluster-4bit", "cluster-pq"]
)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_weights_get_one_clear_error_from_every_method(preset, bad):
    model = _lenet()
    with torch.no_grad():
        model.fc2.weight[0, 1] = bad
    with pytest.raises(mp.ConfigError, match=r"holds NaN or Inf values in 'fc2.weight'"):
        mp.compress(model, preset)


def test_an_overflowing_cast_is_refused():
    model = _lenet()
    with torch.no_grad():
        model.fc1.weight[0, 0] = 1e6  # beyond float16
    with pytest.raises(mp.ConfigError, match=r"result of cast holds NaN or Inf values in 'fc1.weight'"):
        mp.compress(model, "fp16")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "modelpress", "format": "modelpress"}', "repeats the key 'format'"),
        ('{"format": "modelpress", "version": true}', "format version True"),
        ('{"format": "modelpress", "version": 1.0}', "format version 1.0"),
        ('{"format": "modelpress", "version": NaN}', "NaN, which is not JSON"),
        ('{"format": "modelpress", "version": 1e999}', "beyond float range"),
        ('{"format": "modelpress", "version": ' + "9" * 5000 + "}", "corrupt"),
        ("[" * 100000 + "]" * 100000, "corrupt"),
        ("\xff\xfe", "corrupt"),
    ],
)
def test_manifest_json_is_read_strictly(tmp_path, text, message):
    path = mp.save(_lenet(), tmp_path / "a")
    (path / MANIFEST_FILE).write_text(text, encoding="utf-8" if not text.startswith("\xff") else "latin-1")
    with pytest.raises(mp.ArtifactError, match=message):
        mp.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(base=["BertModel"]), "'base' must be an object"),
        (lambda m: m.update(extra=1), "'extra' is not a known key"),
        (lambda m: m["base"].pop("class"), "'base.class' is missing"),
        (lambda m: m["base"].update({"class": "os.system"}), "unknown model architecture|unknown"),
        (
            lambda m: m["base"].update(library="pickle"),
            "'base.library' should be 'transformers', 'modelpress' or 'user'",
        ),
        (lambda m: m["base"]["args"].update(hidden=[16]), "do not build"),
        (lambda m: m["base"]["args"].update(hidden="ab"), "do not build|does not fit"),
        (lambda m: m["base"]["args"].update(num_classes=-1), "do not build|does not fit"),
        (
            lambda m: m["tensors"]["fc1.bias"].update(shape=[-16]),
            "'tensors.fc1.bias.shape.0' should be greater than or equal to 0",
        ),
        (
            lambda m: m["tensors"]["fc1.bias"].update(shape=[2**62, 2**62]),
            "'tensors.fc1.bias.shape.0' should be less than",
        ),
        (
            lambda m: m["tensors"]["fc1.bias"].update(dtype="complex128"),
            "'tensors.fc1.bias.dtype' should be 'float32'",
        ),
        (lambda m: m["aliases"].update({"fc1.bias": "fc2.bias"}), "ties|aliases"),
        (lambda m: m["aliases"].update({"fc1.bias": "nope"}), "not stored"),
        (lambda m: m.update(recipe=[{"method": "no-such-method"}]), "recipe"),
        (lambda m: m.update(recipe={"method": "fp16"}), "'recipe' must be a list"),
        (lambda m: m.update(rebuilt_buffers={"x": "complex"}), "'rebuilt_buffers.x' should be 'float32'"),
        (lambda m: m["digests"].update(algorithm="md5"), "'digests.algorithm' should be"),
        (lambda m: m["digests"]["tensors"].pop("fc1.bias"), "digests do not cover"),
        (lambda m: m.update(structure=[1]), "'structure' must be an object"),
    ],
)
def test_malformed_manifests_fail_with_one_artifact_error(tmp_path, edit, message):
    path = mp.save(_lenet(), tmp_path / "a")
    _edit(path, edit)
    with pytest.raises(mp.ArtifactError, match=message):
        mp.load(path)


def test_load_refuses_a_weights_link_out_of_the_directory(tmp_path):
    outside = mp.save(_lenet(), tmp_path / "outside")
    path = mp.save(_lenet(), tmp_path / "a")
    (path / WEIGHTS_FILE).unlink()
    (path / WEIGHTS_FILE).symlink_to(outside / WEIGHTS_FILE)
    with pytest.raises(mp.ArtifactError, match="link out of the artifact directory"):
        mp.load(path)
    (path / WEIGHTS_FILE).unlink()
    (path / "real.safetensors").write_bytes((outside / WEIGHTS_FILE).read_bytes())
    (path / WEIGHTS_FILE).symlink_to("real.safetensors")  # a link inside is fine
    assert isinstance(mp.load(path), nn.Module)


def test_load_refuses_an_unknown_device(tmp_path):
    path = mp.save(_lenet(), tmp_path / "a")
    with pytest.raises(mp.ConfigError, match="unknown device 'nope'"):
        mp.load(path, device="nope")


def test_save_refuses_the_current_directory_and_unwritable_places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path), "/"):
        with pytest.raises(mp.ModelpressError, match="refusing to write an artifact"):
            mp.save(_lenet(), target)
    (tmp_path / "file").write_text("x")
    with pytest.raises(mp.ModelpressError, match="cannot write an artifact"):
        mp.save(_lenet(), tmp_path / "file" / "sub")
    if Path("/proc/self").is_dir():
        with pytest.raises(mp.ModelpressError, match="cannot write an artifact"):
            mp.save(_lenet(), "/proc/modelpress-test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_config_asking_for_millions_of_layers_is_refused_while_building(tmp_path, tiny_bert):
    path = mp.save(tiny_bert, tmp_path / "a")
    _edit(path, lambda m: m["base"]["config"].update(num_hidden_layers=2**26))
    t0 = time.perf_counter()
    with pytest.raises(mp.ArtifactError, match=r"builds more than .* modules"):
        mp.load(path)
    assert time.perf_counter() - t0 < 30


def test_a_zstd_stream_announcing_another_size_is_refused_before_decoding(tmp_path):
    """No decompression bomb: the frame must announce what the metadata expects."""
    from safetensors.torch import load_file, save_file

    from modelpress.primitives.entropy import zstd_encode

    cfgs = [
        mp.CONFIGS.get("prune")(sparsity=0.5, storage="dense"),
        mp.CONFIGS.get("kmeans")(bits=2, sparsity="keep", coding="zstd", max_iter=3),
    ]
    path = mp.save(mp.compress(_lenet(), cfgs), tmp_path / "a")
    tensors = load_file(str(path / WEIGHTS_FILE))
    key = "fc1.weight.codes"
    tensors[key] = zstd_encode(torch.zeros(10**7, dtype=torch.uint8))  # 10 MB of zeros, a few bytes
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})

    def f(m):
        m["tensors"][key]["shape"] = list(tensors[key].shape)
        m["digests"]["tensors"][key] = tensor_digest(tensors[key])

    _edit(path, f)
    with pytest.raises(mp.ArtifactError, match="announces 10000000 decoded bytes"):
        mp.load(path)
