"""ONNX export: every exportable family matches torch in ONNX Runtime, keeps its size, and
bad input (a format ONNX cannot hold, a corrupt file, a foreign directory) is one clear error."""

import json

import pytest
import torch

import modelpress as mp
from modelpress import kernels
from modelpress.deploy import ExportError, OnnxModel, export_onnx, plan
from modelpress.deploy.onnx import auto_int8_forms
from modelpress.errors import ArtifactError, ModelpressError
from modelpress.methods.quantization import WeightOnlyConfig
from modelpress.models.lenet import LeNet5, LeNet300100


def _ids(vocab: int, b: int = 2, s: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, vocab, (b, s), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _reference(model, feed):
    with torch.no_grad(), kernels.reference_kernels():
        out = model(**feed)
    return out if isinstance(out, torch.Tensor) else out.logits


FAMILIES = [
    ("fp32", None),
    ("fp16", None),
    ("bf16", None),
    ("int8-dynamic", None),
    ("int4-g128", None),
    ("weight-4bit-g32-sym", WeightOnlyConfig(bits=4, group_size=32, symmetric=True)),
    ("weight-2bit-g16", WeightOnlyConfig(bits=2, group_size=16)),
    ("weight-8bit", WeightOnlyConfig(bits=8)),
]


@pytest.mark.parametrize(("label", "cfg"), FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_export_matches_torch_in_onnx_runtime(tmp_path, tiny_bert, tiny_llama, arch, label, cfg):
    base = tiny_bert if arch == "bert" else tiny_llama
    vocab = base.config.vocab_size
    model = mp.compress(base, cfg if cfg is not None else label, progress=False)
    art = mp.save(model, tmp_path / "art")
    model = mp.load(art)
    feed = _ids(vocab)
    # int8: uint8 weights, exact on every CPU (with int8 weights ONNX Runtime's u8 x s8 GEMM
    # saturates on CPUs without VNNI, which tiny random models feel most: top-1 0.89 measured)
    report = export_onnx(
        model,
        tmp_path / "onnx",
        feed,
        accuracy_level=0,
        check_inputs=[feed, _ids(vocab, 3, 7, 1)],
        int8_form="dynamic-u8" if label == "int8-dynamic" else "auto",
    )
    assert report.check["rel_error"] <= report.check["tolerance"]
    meta = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert meta["opset"] == 18 and meta["check"]["top1_agreement"] >= 0.95
    onnx_model = OnnxModel(tmp_path / "onnx")
    other = _ids(vocab, 4, 9, 2)  # another batch and sequence length: dynamic axes
    got, ref = onnx_model(**other).logits, _reference(model, other).float()
    tol = 2e-2 if label in ("fp16", "bf16", "int8-dynamic") else 1e-4
    assert (got - ref).norm() / ref.norm() < tol
    # the compressed size is kept: the ONNX file is about the artifact's size, not fp32's
    fp32_bytes = 4 * sum(p.numel() for p in base.parameters())
    ratio = report.onnx_bytes / mp.artifact_bytes(art)
    assert 0.7 < ratio < 1.35, (report.onnx_bytes, mp.artifact_bytes(art))
    if label != "fp32":
        assert report.onnx_bytes < 0.6 * fp32_bytes
    expected = {"int8-dynamic": "DynamicQuantizeMatMul", "fp32": None, "fp16": None, "bf16": None}
    ops = {p.op for p in report.modules}
    if label in expected:
        assert (expected[label] in ops) if expected[label] else not ops
    else:
        assert "MatMulNBits" in ops


@pytest.fixture
def llama_task(tiny_llama_dir):
    from modelpress.data.datasets import political_speeches
    from modelpress.models.causal_lm import CausalLMTask
    from modelpress.models.sources import local_source

    return CausalLMTask(local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128)


def test_awq_in_scale_and_smoothquant_and_static_int8_export(tmp_path, tiny_llama, llama_task):
    from modelpress.methods.quantization import AWQConfig

    awq = mp.compress(
        tiny_llama,
        AWQConfig(bits=4, group_size=32, n_samples=4, batch_size=4),
        data=llama_task,
        progress=False,
    )
    r = export_onnx(awq, tmp_path / "awq", _ids(tiny_llama.config.vocab_size), accuracy_level=0)
    assert r.check["rel_error"] < 1e-4 and "MatMulNBits" in {p.op for p in r.modules}
    sq = mp.compress(tiny_llama, "smoothquant-w8a8", data=llama_task, progress=False)
    # uint8 weights: exact on every CPU (int8 ones saturate in ORT's u8 x s8 GEMM without VNNI)
    r = export_onnx(sq, tmp_path / "sq", _ids(tiny_llama.config.vocab_size), int8_form="dynamic-u8")
    assert "DynamicQuantizeMatMul" in {p.op for p in r.modules} and r.check["rel_error"] < 0.05
    st = mp.compress(tiny_llama, "int8-static", data=llama_task, progress=False)
    r = export_onnx(st, tmp_path / "st", _ids(tiny_llama.config.vocab_size))
    assert (
        "QuantizeLinear + MatMulIntegerToFloat" in {p.op for p in r.modules} and r.check["rel_error"] < 0.05
    )


def test_lenets_export_and_match(tmp_path):
    torch.manual_seed(0)
    for net, x in ((LeNet5(), torch.randn(3, 1, 28, 28)), (LeNet300100(), torch.randn(3, 784))):
        for method in ("fp32", "int8-dynamic"):
            m = mp.compress(net.eval(), method, progress=False)
            out = tmp_path / f"{type(net).__name__}-{method}"
            r = export_onnx(m, out, {"x": x}, allow_decoded=True)
            got = OnnxModel(out)(x=torch.randn(5, *x.shape[1:]))
            assert isinstance(got, torch.Tensor) and got.shape == (5, 10)  # a bare tensor, as the model's
            assert r.check["rel_error"] < 0.05


def test_formats_without_an_onnx_form_are_refused_or_decoded_when_allowed(tmp_path, tiny_bert):
    model = mp.compress(tiny_bert, "cluster-4bit", progress=False)
    refused = [p for p in plan(model) if p.op == "refused"]
    assert refused and "codebook" in refused[0].why
    with pytest.raises(ExportError, match=r"no ONNX form that keeps their size.*--allow-decoded"):
        export_onnx(model, tmp_path / "c", _ids(tiny_bert.config.vocab_size))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.tmp-*"))  # nothing half-written
    r = export_onnx(model, tmp_path / "c", _ids(tiny_bert.config.vocab_size), allow_decoded=True)
    assert r.decoded and all(p.op == "decoded float32" for p in r.modules if p.name in r.decoded)
    assert r.check["rel_error"] < 1e-4


def test_a_3bit_weight_has_no_matmulnbits_form(tmp_path, tiny_llama):
    model = mp.compress(tiny_llama, WeightOnlyConfig(bits=3, group_size=32), progress=False)
    with pytest.raises(ExportError, match="2, 4, 8-bit weights, not 3-bit"):
        export_onnx(model, tmp_path / "x", _ids(tiny_llama.config.vocab_size))


def test_corrupt_or_truncated_onnx_is_one_clear_error(tmp_path, tiny_bert):
    out = tmp_path / "e"
    export_onnx(tiny_bert, out, _ids(tiny_bert.config.vocab_size))
    f = out / "model.onnx"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot open"):
        OnnxModel(out)
    f.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot open"):
        OnnxModel(out)
    (out / "export.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"export\.json"):
        OnnxModel(out)
    with pytest.raises(ArtifactError, match=r"is not a modelpress ONNX export"):
        OnnxModel(tmp_path)


def test_export_never_overwrites_foreign_files_and_replaces_its_own(tmp_path, tiny_bert):
    foreign = tmp_path / "site"
    foreign.mkdir()
    (foreign / "index.html").write_text("x")
    with pytest.raises(ModelpressError, match="not a modelpress ONNX export"):
        export_onnx(tiny_bert, foreign, _ids(tiny_bert.config.vocab_size))
    assert (foreign / "index.html").read_text() == "x"
    out = tmp_path / "e"
    export_onnx(tiny_bert, out, _ids(tiny_bert.config.vocab_size))
    first = (out / "model.onnx").stat().st_mtime_ns
    export_onnx(mp.compress(tiny_bert, "int8-dynamic"), out, _ids(tiny_bert.config.vocab_size))
    assert (out / "model.onnx").stat().st_mtime_ns != first
    assert "DynamicQuantizeMatMul" in (out / "export.json").read_text()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ModelpressError, match="also holds files"):
        export_onnx(tiny_bert, out, _ids(tiny_bert.config.vocab_size))


def test_export_leaves_the_model_as_it_was(tmp_path, tiny_bert):
    model = mp.compress(tiny_bert, "int8-dynamic")
    feed = _ids(tiny_bert.config.vocab_size)
    before = _reference(model, feed)
    export_onnx(model, tmp_path / "e", feed)
    assert (
        not model.training
        and type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Int8DynamicLinear"
    )
    assert torch.equal(_reference(model, feed), before)


def test_export_with_task_metric_and_cli(tmp_path, tiny_bert_dir, small_splits):
    from typer.testing import CliRunner

    from modelpress.cli import app
    from modelpress.models.classification import TextClassificationTask
    from modelpress.models.sources import local_source

    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)
    art = mp.save(mp.compress(task.load_original(progress=False), "int8-dynamic"), tmp_path / "art")
    r = mp.export(art, tmp_path / "onnx", data=task, evaluate=True, metric_tolerance=5.0)
    t = r.check["task"]
    assert t["metric"] == "accuracy" and t["agreement"] > 0.9 and abs(t["drop"]) <= 5.0
    assert (tmp_path / "onnx" / "tokenizer" / "tokenizer.json").is_file()  # the task's, next to the model

    data = tmp_path / "d.jsonl"
    rows = zip(small_splits.train.texts, small_splits.train.labels, strict=True)
    data.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    res = CliRunner().invoke(
        app,
        [
            "export",
            str(art),
            "-o",
            str(tmp_path / "cli"),
            "--model",
            str(tiny_bert_dir),
            "--data",
            str(data),
            "--no-check-metric",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "DynamicQuantizeMatMul" in res.output and (tmp_path / "cli" / "model.onnx").is_file()
    res = CliRunner().invoke(app, ["export", str(art), "-o", str(tmp_path / "x"), "--format", "tflite"])
    assert res.exit_code == 2 and "export format must be one of onnx" in res.output


@pytest.mark.parametrize("method", ["prune-heads-25", "prune-ffn-50", "distill-3l"])
def test_structured_and_distilled_models_export_and_match(tmp_path, tiny_bert_dir, small_splits, method):
    from modelpress.models.classification import TextClassificationTask
    from modelpress.models.sources import local_source

    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)
    model = mp.load(
        mp.save(
            mp.compress(task.load_original(progress=False), method, data=task, progress=False), tmp_path / "a"
        )
    )
    r = export_onnx(model, tmp_path / "e", task.example_inputs(2), check_inputs=[task.example_inputs(8)])
    assert r.check["rel_error"] < 1e-4 and r.check["top1_agreement"] == 1.0


def test_int8_layers_as_8bit_matmulnbits_and_the_auto_fallback(tmp_path, tiny_llama):
    model = mp.compress(tiny_llama, "int8-dynamic")
    feed = _ids(tiny_llama.config.vocab_size)
    r = export_onnx(model, tmp_path / "n", feed, int8_form="nbits")
    ops = {p.op for p in r.modules}
    assert (
        ops == {"MatMulNBits (8-bit)", "Gather (n-bit)"} and r.check["rel_error"] < 0.02
    )  # tied head: one B
    dyn = export_onnx(model, tmp_path / "d", feed, int8_form="dynamic")
    u8 = export_onnx(model, tmp_path / "u", feed, int8_form="dynamic-u8")
    assert dyn.check["rel_error"] > r.check["rel_error"]  # per tensor vs per block of each row
    # the same integers as uint8 (zero point 128): never worse than int8 weights (no u8 x s8
    # int16 saturation, which ONNX Runtime has on CPUs without VNNI), the same size
    assert u8.check["rel_error"] <= 1.05 * dyn.check["rel_error"] + 1e-6
    assert abs(u8.onnx_bytes - dyn.onnx_bytes) < 0.01 * dyn.onnx_bytes
    import onnx

    b_types = {t.data_type for t in onnx.load(str(tmp_path / "u" / "model.onnx")).graph.initializer if t.name}
    assert onnx.TensorProto.UINT8 in b_types
    # auto: DynamicQuantizeMatMul (int8, then uint8 weights) first; where neither matches,
    # 8-bit MatMulNBits, said in export.json
    tol = (r.check["rel_error"] + min(dyn.check["rel_error"], u8.check["rel_error"])) / 2
    auto = export_onnx(model, tmp_path / "a", feed, tolerance=tol)
    note = json.loads((tmp_path / "a" / "export.json").read_text())["int8_fallback"]
    assert "MatMulNBits (8-bit)" in {p.op for p in auto.modules}
    assert "DynamicQuantizeMatMul did not match" in note and "(uint8 weights) did not match" in note
    # where both match, auto writes int8 weights (the faster form), with no fallback said
    tol = 1.01 * max(dyn.check["rel_error"], u8.check["rel_error"])
    auto = export_onnx(model, tmp_path / "a2", feed, tolerance=tol)
    assert auto_int8_forms()[0] == "dynamic" and "int8_fallback" not in auto.check
    b = {t.data_type for t in onnx.load(str(tmp_path / "a2" / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.UINT8 not in b
    # where int8 weights do not match (u8 x s8 saturating on CPUs without VNNI), uint8 ones do
    if dyn.check["rel_error"] > 1.5 * u8.check["rel_error"]:
        tol = (u8.check["rel_error"] + dyn.check["rel_error"]) / 2
        auto = export_onnx(model, tmp_path / "a3", feed, tolerance=tol)
        assert auto.check["int8_fallback"].endswith("written as DynamicQuantizeMatMul (uint8 weights)")
    with pytest.raises(mp.ConfigError, match="int8_form"):
        export_onnx(model, tmp_path / "x", feed, int8_form="fast")
