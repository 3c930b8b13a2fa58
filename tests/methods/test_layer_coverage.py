"""Layer coverage (issue 19, item 6): every registered preset (and a few configs that are not
presets: recurrent pruning, BatchNorm folding) on small plain models, each holding one layer
kind real models have next to their Linears: grouped / depthwise Conv1d / Conv2d,
ConvTranspose2d, PReLU, BatchNorm after a conv, LayerNorm, RMSNorm, GRU, LSTM, an Embedding
with ``padding_idx`` and tied embedding / output weights (``coverage_models.py``).

Each (layer kind, method) either
- runs: the output is finite, of the original's shape, close to it where the method can be
  (``TOLERANCE``), ``save`` + ``load`` give the same outputs, the artifact is smaller than
  the float one; and the layer under test is *compressed*, or *noted* (left in float, and
  a compression note names it), or *float* (vectors: norms, PReLU, BatchNorm parameters
  stay float in every method; or a layer the method's selection leaves alone by design);
- or *refuses* with one ModelpressError sentence.

``EXPECTED`` records which, so that a change is visible; docs/coverage.md is generated from
it (``python tests/methods/test_layer_coverage.py --write``) and checked here."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
from coverage_models import PROBES, SyntheticData, build
from torch import nn

import modelpress as mp
from modelpress.formats.base import CompressedTensor
from modelpress.methods.base import PRESETS, MethodConfig
from modelpress.methods.clustering.kmeans import KMeansConfig
from modelpress.methods.clustering.pq import ProductQuantConfig
from modelpress.methods.fold import FoldBatchNormConfig, fold_batchnorm
from modelpress.methods.pruning.prune import PruneConfig
from modelpress.methods.quantization.weight_only import WeightOnlyConfig
from modelpress.nn.base import CompressedModule

DOCS = Path(__file__).resolve().parents[2] / "docs" / "coverage.md"

# configs that are not presets, run like them
EXTRA: dict[str, list[MethodConfig]] = {
    "prune-rnn-50": [PruneConfig(sparsity=0.5, layers=("linear", "rnn"))],
    "prune-recurrent-50": [PruneConfig(sparsity=0.5, layers=("linear", "recurrent"))],
    "fold-bn+cluster-4bit": [FoldBatchNormConfig(), KMeansConfig(bits=4)],
    "fold-bn+int4": [FoldBatchNormConfig(), WeightOnlyConfig(bits=4, group_size=32)],
}
METHODS = [*PRESETS.names(), *EXTRA]

# the layer(s) under test in each model
TARGETS: dict[str, tuple[str, ...]] = {
    "conv1d-grouped": ("conv",),
    "conv2d-depthwise": ("dw", "pw"),
    "conv-transpose2d": ("up",),
    "prelu": ("act",),
    "batchnorm": ("features.0", "features.3"),
    "layernorm": ("norm",),
    "rmsnorm": ("norm",),
    "gru": ("rnn",),
    "lstm": ("rnn",),
    "embedding-padding": ("emb",),
    "tied-weights": ("emb", "head"),
}
VECTORS = {"prelu", "layernorm", "rmsnorm"}  # parameters are vectors: float in every method

# relative output error bound (Frobenius) where a method can stay close; others: finite only
TOLERANCE: dict[str, float] = {
    "fp16": 0.01,
    "bf16": 0.02,
    "int8-dynamic": 0.05,
    "int8-weight": 0.05,
    "int8-static": 0.15,  # static activation ranges from 32 calibration examples
    "smoothquant-w8a8": 0.15,
    "cluster-8bit": 0.05,
    "int4-g128": 0.3,
    "nf4": 0.3,
    "quantile-4bit": 0.3,
    "gptq-4bit": 0.3,
    "awq-4bit": 0.3,
    "cluster-4bit": 0.3,
    "cluster-4bit+int8cb": 0.3,
    "fold-bn+cluster-4bit": 0.3,
    "fold-bn+int4": 0.3,
}

# presets whose loaded outputs may differ from the in-memory model's by a kernel's
# tolerance (the dispatcher may pick another kernel for the loaded format), not bit-equal
KERNEL_TOLERANT = {"deep-compression-fc"}

_TRANSFORMERS_ONLY = {
    "distill-3l",
    "distill-3l+int8",
    "distill-half-width",
    "prune-ffn-50",
    "prune-heads-25",
    "prune-structured",
}
_BASELINE = {"fp32", "fp16", "bf16"}  # casts: every layer cast, nothing "compressed"


def _all(*names: str) -> set[str]:
    return set(names)


# what each method does with the layer under test: "compressed" | "noted" | "float" | "refused";
# a method not listed for a model is "compressed" (or "float" for the casts and vector layers)
_CONV_FLOAT = {  # conv weights are left in float (with a note) by every method but these
    "awq-4bit", "binary-bwn", "binary-xnor", "gptq-3bit", "gptq-4bit", "int2-g64", "int3-g128",
    "int4-g128", "int8-dynamic", "int8-static", "int8-weight", "lowrank-30-ft", "lowrank-svd-20",
    "lowrank-svdllm-20", "lowrank-svdllm-20+int8", "mixed-4bit-avg", "nf4", "prune-2:4", "prune-50",
    "prune-50+ternary-b158", "prune-global-70", "prune-gradual-80", "prune-wanda-50", "qat-int4",
    "quantile-4bit", "smoothquant-w8a8", "ternary-b158", "ternary-b158-kd", "binary-bwn-kd", "prune-rnn-50",
    "prune-recurrent-50", "fold-bn+int4",
}  # fmt: skip
_RNN_FLOAT = {  # GRU / LSTM matrices left in float (with a note)
    "awq-4bit", "gptq-3bit", "gptq-4bit", "int8-static", "smoothquant-w8a8", "mixed-4bit-avg", "qat-int4",
    "cluster-pq", "deep-compression-fc",
}  # fmt: skip
EXPECTED: dict[str, dict[str, str]] = {kind: {} for kind in PROBES}


def _set(kinds: set[str] | str, methods: set[str], outcome: str) -> None:
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        for m in methods:
            EXPECTED[kind][m] = outcome


_set(set(PROBES), _TRANSFORMERS_ONLY, "refused")
_set({"conv1d-grouped", "conv2d-depthwise", "batchnorm"}, _CONV_FLOAT, "noted")  # fmt: skip
_set("conv-transpose2d", set(METHODS) - _BASELINE - _TRANSFORMERS_ONLY, "noted")  # no transposed-conv format
_set({"gru", "lstm"}, _RNN_FLOAT, "noted")
_BINARY = _all(
    "binary-bwn", "binary-bwn-kd", "binary-xnor", "ternary-b158", "ternary-b158-kd", "ternary-b158-kd+emb4"
)
_set({"gru", "lstm"}, _BINARY, "refused")
_LOWRANK = _all("lowrank-30-ft", "lowrank-svd-20", "lowrank-svdllm-20", "lowrank-svdllm-20+int8")
_set({"gru", "lstm"}, _LOWRANK, "refused")  # the output layer is the only Linear
_set({"gru", "lstm"}, _all("prune-2:4", "prune-50", "prune-50+ternary-b158", "prune-global-70"), "refused")
_set({"gru", "lstm"}, _all("prune-gradual-80", "prune-wanda-50", "deep-compression"), "refused")
_set("gru", _all("cluster-pq"), "refused")  # fmt: skip
_set({"layernorm", "rmsnorm", "prelu"}, _all("binary-xnor", "deep-compression"), "refused")
_set({"conv-transpose2d", "embedding-padding"}, _all("deep-compression"), "refused")
_CONV_KINDS = {"conv1d-grouped", "conv2d-depthwise", "batchnorm"}
_set(_CONV_KINDS, _all("deep-compression"), "refused")  # 256 clusters for conv kernels this small
_set(_CONV_KINDS, _all("deep-compression-fc"), "noted")  # Linears only
# small conv kernels: fewer weights per channel codebook than centroids (int8cb is per channel;
# 8 bits need 256 weights), or rows that do not split into pq sub-vectors: skipped with a note
_SMALL = _all("cluster-4bit+int8cb", "cluster-8bit", "cluster-pq")
_set({"conv1d-grouped", "conv2d-depthwise"}, _SMALL, "noted")
_set("batchnorm", _all("cluster-pq"), "noted")
# embeddings: binary / ternary keep them float by default (embeddings: false), pruning and
# the deep-compression recipes select Linears only
_EMB_FLOAT = {
    "binary-bwn", "binary-bwn-kd", "binary-xnor", "ternary-b158", "ternary-b158-kd", "prune-2:4",
    "prune-50+ternary-b158",
    "prune-global-70", "prune-gradual-80", "prune-wanda-50", "deep-compression-fc", "prune-rnn-50",
    "prune-recurrent-50", "lowrank-30-ft", "lowrank-svd-20", "lowrank-svdllm-20",
}  # fmt: skip
_set({"embedding-padding", "tied-weights"}, _EMB_FLOAT, "float")
_set("tied-weights", _all("prune-50", "deep-compression", "deep-compression-fc"), "refused")
EXPECTED["tied-weights"].update({"prune-2:4": "float"})
# distillation from the teacher takes dict batches (a task adapter's); these are tuples
_set(set(PROBES), _all("ternary-b158-kd", "ternary-b158-kd+emb4", "binary-bwn-kd"), "refused")
# channel pruning changes shapes, not formats: the layer under test stays a float module
# (its channels pruned where its group allows, kept whole with a note otherwise); a model
# whose every layer is kept whole (the channels reach a norm, the RNN or the output only) or
# whose pruned layer shares a tied weight is refused
_set(set(PROBES), _all("prune-channels-50"), "float")
_set({"prelu", "layernorm", "rmsnorm", "gru", "lstm", "tied-weights"}, _all("prune-channels-50"), "refused")


def expected(kind: str, method: str) -> str:
    got = EXPECTED[kind].get(method)
    if got is not None:
        return got
    if method in _BASELINE or kind in VECTORS:
        return "float"
    return "compressed"


def _layer_state(model: nn.Module, name: str) -> str:
    mod = model.get_submodule(name)
    return "compressed" if isinstance(mod, (CompressedModule, CompressedTensor)) else "float"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def _run(kind: str, method: str, tmp_path: Path, base_size: int) -> tuple[str, str]:
    """``(outcome, detail)`` of one (layer kind, method), checking everything on the way
    (``base_size``: bytes of the float model's artifact)."""
    model = build(kind)
    data = SyntheticData(model, n=32)
    x = model.example(8, torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    recipe = EXTRA.get(method, method)
    torch.manual_seed(0)
    try:
        out = mp.compress(model, recipe, data=data, progress=False)
    except mp.ModelpressError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), f"{kind}/{method}: unclear refusal {msg!r}"
        return "refused", msg
    dtype = next(t.dtype for t in out.state_dict().values() if t.is_floating_point())
    xx = x.to(dtype) if x.is_floating_point() else x
    with torch.no_grad():
        y = out(xx).float()
    assert y.shape == ref.shape and bool(torch.isfinite(y).all()), f"{kind}/{method}: bad output"
    err = float((y - ref).norm() / ref.norm())
    if method in TOLERANCE:
        assert err < TOLERANCE[method], f"{kind}/{method}: output error {err:.3g} >= {TOLERANCE[method]}"
    path = mp.save(out, tmp_path / f"{kind}-{method}".replace(":", "_"))
    compressed = all(_layer_state(out, n) == "compressed" for n in TARGETS[kind])
    if (compressed and method not in _BASELINE) or method in ("fp16", "bf16"):
        assert _size(path) < base_size, f"{kind}/{method}: artifact not smaller"
    loaded = mp.load(path)
    with torch.no_grad():
        y2 = loaded(xx).float()
    if method in KERNEL_TOLERANT:
        assert float((y2 - y).norm() / y.norm()) < 1e-2, f"{kind}/{method}: loaded outputs differ"
    else:
        assert torch.equal(y, y2), f"{kind}/{method}: loaded outputs differ"
    notes = mp.compression_notes(out)
    if kind == "embedding-padding":
        _check_padding(out, loaded)
    if kind == "tied-weights":
        _check_tie(out, loaded, kind, method)
    floats = [n for n in TARGETS[kind] if _layer_state(out, n) == "float"]
    if not floats:
        return "compressed", ""
    named = {t: [n for n in notes if re.search(rf"(^|[ :,]){re.escape(t)}([ :,]|$)", n)] for t in floats}
    if all(named.values()):  # each layer left in float is named by a note
        return "noted", "; ".join(sorted({v[0] for v in named.values()}))
    assert len(floats) == len(TARGETS[kind]), f"{kind}/{method}: {floats} left in float without a note"
    return "float", ""


def _check_padding(out: nn.Module, loaded: nn.Module) -> None:
    """The padding row stays exactly zero and the padding index is kept."""
    for m in (out, loaded):
        emb = m.get_submodule("emb")
        assert getattr(emb, "padding_idx", None) == 0
        with torch.no_grad():
            row = emb(torch.zeros(1, 1, dtype=torch.long))
        assert not bool(row.any()), "the padding row decodes to non-zeros"


def _check_tie(out: nn.Module, loaded: nn.Module, kind: str, method: str) -> None:
    """Tied embedding / output weights stay one tensor (or one format object)."""
    for m in (out, loaded):
        emb, head = m.get_submodule("emb"), m.get_submodule("head")
        if isinstance(emb.weight, CompressedTensor) or isinstance(head.weight, CompressedTensor):
            assert emb.weight is head.weight, f"{kind}/{method}: the tie is lost"
        else:
            assert emb.weight.data_ptr() == head.weight.data_ptr(), f"{kind}/{method}: the tie is lost"


@pytest.mark.parametrize("kind", list(PROBES))
def test_every_method_works_on_or_refuses_the_layer_kind(kind, tmp_path):
    base_size = _size(mp.save(build(kind), tmp_path / "fp32-base"))
    got = {m: _run(kind, m, tmp_path, base_size) for m in METHODS}
    wrong = {m: (o, d) for m, (o, d) in got.items() if o != expected(kind, m)}
    assert not wrong, {m: f"expected {expected(kind, m)}, got {o}: {d}" for m, (o, d) in wrong.items()}


def test_fold_batchnorm_is_exact_in_eval_mode():
    """Folded convs (plain, grouped, transposed with groups, Linear + BatchNorm1d, a conv
    without bias) give the original outputs within 1e-5; the model still saves and loads."""

    class Free(nn.Module):  # not a Sequential: the pairs are found through torch.fx
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(6, 8, 3, groups=2)
            self.bn_up = nn.BatchNorm2d(8)
            self.conv = nn.Conv1d(4, 6, 3, groups=2, bias=False)
            self.bn_conv = nn.BatchNorm1d(6)
            self.fc = nn.Linear(5, 7)
            self.bn_fc = nn.BatchNorm1d(7)

        def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.bn_up(self.up(a)), self.bn_conv(self.conv(b)), self.bn_fc(self.fc(c))

    torch.manual_seed(0)
    free = Free().eval()
    with torch.no_grad():
        for bn in (free.bn_up, free.bn_conv, free.bn_fc):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.3, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
    args = (torch.randn(2, 6, 5, 5), torch.randn(2, 4, 9), torch.randn(3, 5))
    folded = copy.deepcopy(free)
    assert fold_batchnorm(folded) == [("up", "bn_up"), ("conv", "bn_conv"), ("fc", "bn_fc")]
    for a, b in zip(free(*args), folded(*args), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert bool((folded.bn_up.weight == 1).all()) and not bool(folded.bn_up.running_mean.any())
    assert not bool(folded.bn_up.bias.any())  # the shift went into the conv's bias
    assert bool(folded.bn_conv.bias.any())  # no conv bias: the shift stays in the BatchNorm

    seq = build("batchnorm")  # nn.Sequential pairs, a model fx traces too
    x = seq.example(4, torch.Generator().manual_seed(1))
    folded_seq = copy.deepcopy(seq)
    assert fold_batchnorm(folded_seq) == [("features.0", "features.1"), ("features.3", "features.4")]
    assert torch.allclose(seq(x), folded_seq(x), atol=1e-5, rtol=1e-5)
    assert fold_batchnorm(folded_seq) == [("features.0", "features.1"), ("features.3", "features.4")]
    assert torch.allclose(seq(x), folded_seq(x), atol=1e-5, rtol=1e-5)  # folding twice: a no-op


def test_fold_batchnorm_leaves_shared_and_untraceable_pairs_alone(tmp_path):
    class Branchy(nn.Module):  # the conv's output feeds the BatchNorm and something else
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    assert fold_batchnorm(Branchy().eval()) == []
    ctx_model = mp.compress(build("prelu"), [FoldBatchNormConfig()], progress=False)
    assert any("nothing folded" in n for n in mp.compression_notes(ctx_model))


def test_decoded_rnn_equals_the_rnn_on_decoded_weights():
    """A GRU / LSTM with quantized matrices computes exactly what torch's layer computes
    with the decoded weights, for batched, unbatched and packed inputs and initial states."""
    for kind in ("gru", "lstm"):
        model = build(kind)
        out = mp.compress(model, "int4-g128", progress=False)
        rnn = out.get_submodule("rnn")
        ref = copy.deepcopy(model.get_submodule("rnn"))
        with torch.no_grad():
            for n in rnn.format_attrs:
                getattr(ref, n).copy_(getattr(rnn, n).decode())
        x = torch.randn(3, 6, 16)
        for args in [(x,), (x[0],)]:
            a, b = rnn(*args), ref(*args)
            assert torch.allclose(a[0], b[0], atol=1e-6)
        packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True)
        assert torch.allclose(rnn(packed)[0].data, ref(packed)[0].data, atol=1e-6)


def test_recurrent_pruning_prunes_weight_hh_only(tmp_path):
    """``layers: [recurrent]`` prunes the recurrent connections (``weight_hh``) of every layer
    and direction to the sparsity asked, leaves the input matrices dense and float, and the
    sparse artifact loads back to equal outputs."""
    model = build("lstm")
    out = mp.compress(model, [PruneConfig(sparsity=0.5, layers=("recurrent",), head=True)], progress=False)
    rnn = out.get_submodule("rnn")
    hh = [n for n in rnn.format_attrs if n.startswith("weight_hh")]
    assert sorted(rnn.format_attrs) == sorted(hh) and len(hh) == 4  # 2 layers x 2 directions
    for n in hh:
        assert abs(float((getattr(rnn, n).decode() == 0).float().mean()) - 0.5) < 0.01
    orig = model.get_submodule("rnn")
    assert torch.equal(rnn.weight_ih_l1_reverse, orig.weight_ih_l1_reverse)
    x = model.example(4, torch.Generator().manual_seed(2))
    loaded = mp.load(mp.save(out, tmp_path / "a"))
    with torch.no_grad():
        assert torch.equal(out(x), loaded(x))


def test_pq_refuses_recurrent_layers_and_notes_them():
    with pytest.raises(mp.ModelpressError, match="pq: does not handle recurrent layers"):
        ProductQuantConfig(layers=("rnn",))
    out = mp.compress(build("lstm"), "cluster-pq", progress=False)
    assert any("LSTM rnn" in n and n.startswith("pq: left in float") for n in mp.compression_notes(out))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group", "group-scaled"])
def test_kmeans_keeps_the_padding_row_zero(granularity):
    model = build("embedding-padding")
    cfg = KMeansConfig(bits=3, granularity=granularity, group_size=16 if "group" in granularity else None)
    out = mp.compress(model, cfg, progress=False)
    w = out.get_submodule("emb").weight.decode()
    assert not bool(w[0].any())
    # the other rows are clustered as before (the zero centroid moves only its own weights)
    ref = model.get_submodule("emb").weight.detach()
    assert float((w[1:] - ref[1:]).norm() / ref[1:].norm()) < 0.35


def render() -> str:
    """The coverage table of docs/coverage.md, from ``EXPECTED``."""
    families: dict[str, list[str]] = {}
    for name in METHODS:
        fam = PRESETS.get(name).family if name in PRESETS else "other configs"
        families.setdefault(fam, []).append(name)
    kinds = list(PROBES)
    mark = {"compressed": "C", "noted": "N", "float": "F", "refused": "R"}
    lines = ["| method | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for fam, names in families.items():
        for name in names:
            cells = [mark[expected(k, name)] for k in kinds]
            lines.append(f"| `{name}` ({fam}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_BEGIN, _END = "<!-- coverage: generated", "<!-- coverage: end -->"


def _block(text: str) -> str:
    start = text.index(_BEGIN)
    start = text.index("\n", start) + 1
    return text[start : text.index(_END)].strip()


def test_docs_table_is_generated_from_the_expectations():
    assert _block(DOCS.read_text()) == render(), "run python tests/methods/test_layer_coverage.py --write"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = DOCS.read_text()
    start = text.index("\n", text.index(_BEGIN)) + 1
    DOCS.write_text(text[:start] + render() + "\n" + text[text.index(_END) :])
