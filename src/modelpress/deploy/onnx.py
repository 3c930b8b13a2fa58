"""ONNX export of (compressed) models, checked in ONNX Runtime before it is kept.

``export_onnx(model, out_dir, inputs)`` writes ``out_dir/model.onnx`` (+ ``export.json``,
and ``tokenizer/`` when given) and returns an ``ExportReport``. The compressed modules are
swapped for the stand-ins of ``onnx_ops`` (modelpress's own integers, scales and zero
points in ONNX Runtime's operators), the model is traced by ``torch.onnx.export`` with
dynamic batch and sequence axes, float weights of a cast model are stored in its dtype
(fp16 / bf16, computed in fp32 by ONNX Runtime, whose CPU provider has few fp16 kernels),
and the file is run in ONNX Runtime on the given inputs and compared with the torch model:
beyond the tolerance the export fails and nothing is written. See docs/export.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import kernels
from ..errors import ArtifactError, ConfigError, ModelpressError, SaveError
from ..formats.affine import AffineQuantized
from . import onnx_ops as ops

__all__ = [
    "EXPORT_FILE",
    "ONNX_FILE",
    "ExportError",
    "ExportReport",
    "export_onnx",
    "plan",
]

ONNX_FILE = "model.onnx"
EXPORT_FILE = "export.json"
EXPORT_FORMAT = "modelpress-onnx"
EXPORT_VERSION = 1
DEFAULT_OPSET = 18  # BitwiseAnd (n-bit embeddings) needs 18
NBITS8 = "MatMulNBits (8-bit)"
#: blocks of the 8-bit form: its activations are quantized per block (accuracy level 4);
#: 32 costs one float32 scale per 32 weights (9 bits / weight) and kept SmolLM2's logits
#: within the tolerance where 64-256 did not (relative error 0.052)
NBITS8_BLOCK = 32
EXPORT_ENTRIES = frozenset({ONNX_FILE, EXPORT_FILE, "tokenizer", "model.onnx.data"})


class ExportError(ModelpressError):
    """The model cannot be exported, or its export does not match it."""


#: ``export_onnx``'s ``int8_form`` values, and what each writes
INT8_FORMS = ("auto", "dynamic", "dynamic-u8", "nbits")
INT8_FORM_NAMES = {
    "dynamic": "DynamicQuantizeMatMul",
    "dynamic-u8": "DynamicQuantizeMatMul (uint8 weights)",
    "nbits": "8-bit MatMulNBits",
}


class ExportMismatch(ExportError):
    """The exported model ran, but its outputs differ from the torch model's beyond the tolerance."""


@dataclasses.dataclass
class ExportReport:
    path: Path
    opset: int
    onnx_bytes: int
    modules: list[ops.Planned]
    check: dict[str, Any]
    seconds: float
    decoded: list[str]  # modules exported as decoded float weights (allow_decoded)

    def summary(self) -> str:
        forms: dict[str, int] = {}
        for p in self.modules:
            forms[p.op] = forms.get(p.op, 0) + 1
        parts = ", ".join(f"{op} x{n}" for op, n in sorted(forms.items(), key=lambda kv: -kv[1]))
        c = self.check
        return (
            f"{self.path / ONNX_FILE}: {self.onnx_bytes / 1e6:.2f} MB, opset {self.opset}"
            + (f"; {parts}" if parts else "")
            + (
                f"; ONNX Runtime vs torch: max abs diff {c['max_abs_diff']:.3g}, relative error "
                f"{c['rel_error']:.3g} (tolerance {c['tolerance']:.3g}), "
                f"top-1 agreement {100 * c['top1_agreement']:.2f}%"
                if c
                else ""
            )
        )


def plan(model: nn.Module) -> list[ops.Planned]:
    """What the exporter does with each compressed module of ``model``."""
    out = []
    for name, m in model.named_modules():
        p = ops.plan_module(name, m)
        if p is not None:
            out.append(p)
    return out


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _head_sharing(model: nn.Module) -> dict[int, str]:
    """id(format) -> name of the Linear that uses a format also used by an embedding."""
    from ..nn.decoded import DecodedEmbedding, DecodedLinear
    from ..nn.int8 import Int8DynamicLinear, Int8Embedding

    emb = {id(m.weight) for m in model.modules() if isinstance(m, (DecodedEmbedding, Int8Embedding))}
    return {
        id(m.weight): n
        for n, m in model.named_modules()
        if isinstance(m, (DecodedLinear, Int8DynamicLinear)) and id(m.weight) in emb
    }


def _int8_table(fmt: Any, u8: bool) -> torch.Tensor:
    """A W8A8 weight's integers as DynamicQuantizeMatMul's ``(K, N)`` B: int8, or shifted by
    128 to uint8 (the same integers with zero point 128)."""
    bt = fmt.qdata.to(torch.int8).t().contiguous()
    return (bt.to(torch.int16) + 128).to(torch.uint8) if u8 else bt


@contextlib.contextmanager
def _standins(
    model: nn.Module, planned: list[ops.Planned], accuracy_level: int, u8: bool = False
) -> Iterator[None]:
    """Swap every compressed module for its export stand-in; put them back afterwards.
    ``u8``: W8A8 dynamic weights as uint8 with zero point 128 (``int8_form="dynamic-u8"``)."""
    from ..nn.decoded import DecodedEmbedding, DecodedLinear
    from ..nn.int8 import Int8DynamicLinear, Int8Embedding, Int8SmoothLinear, Int8StaticLinear

    originals: list[tuple[str, nn.Module]] = []
    nbits: dict[int, ops.NBitsTensors] = {}  # id(format) -> one set of tensors (tied weights)
    int8_t: dict[int, torch.Tensor] = {}  # id(format) -> (K, N) int8 (or uint8), shared by a tied head
    tied = _head_sharing(model)
    try:
        for p in planned:
            m = model.get_submodule(p.name)
            if p.op in ("refused", "decoded float32"):
                new = ops.decoded_standin(m)
            elif isinstance(m, Int8StaticLinear):
                new = ops.StaticQuantLinear(m, m.weight.decode(torch.float32))
            elif isinstance(m, (Int8DynamicLinear, Int8SmoothLinear)) and p.op == NBITS8:
                # int8 weights as 8-bit MatMulNBits: ONNX Runtime quantizes the activations per
                # block of the row (accuracy level 4), not per tensor
                fmt = m.weight
                t = nbits.setdefault(id(fmt), ops.nbits_tensors(fmt, NBITS8_BLOCK))
                smooth = m.smooth if isinstance(m, Int8SmoothLinear) else None
                if smooth is not None:
                    t = dataclasses.replace(t, in_scale=smooth.float())
                w = fmt.decode(torch.float32) / (1 if smooth is None else smooth.float())
                new = ops.NBitsLinear(t, m.bias, w, max(accuracy_level, 4))
            elif isinstance(m, (Int8DynamicLinear, Int8SmoothLinear)):
                fmt = m.weight
                bt = int8_t.setdefault(id(fmt), _int8_table(fmt, u8))
                smooth = m.smooth if isinstance(m, Int8SmoothLinear) else None
                new = ops.DynQuantLinear(bt, fmt.scale, m.bias, fmt.decode(torch.float32), smooth)
            elif isinstance(m, Int8Embedding) and p.op == "Gather (n-bit)":  # a tied 8-bit MatMulNBits head
                t = nbits.setdefault(id(m.weight), ops.nbits_tensors(m.weight, NBITS8_BLOCK))
                new = ops.NBitsEmbedding(t, m.padding_idx)
            elif isinstance(m, Int8Embedding):
                fmt = m.weight
                if id(fmt) in tied:
                    bt = int8_t.setdefault(id(fmt), _int8_table(fmt, u8))
                    new = ops.Int8Gather(bt, fmt.scale, transposed=True)
                else:
                    new = ops.Int8Gather(fmt.qdata.to(torch.int8), fmt.scale, transposed=False)
            elif isinstance(m, DecodedLinear):
                t = nbits.setdefault(id(m.weight), ops.nbits_tensors(m.weight))  # type: ignore[arg-type]
                new = ops.NBitsLinear(t, m.bias, m.weight.decode(torch.float32), accuracy_level)
            elif isinstance(m, DecodedEmbedding):
                t = nbits.setdefault(id(m.weight), ops.nbits_tensors(m.weight))  # type: ignore[arg-type]
                new = ops.NBitsEmbedding(t, getattr(m, "padding_idx", None))
            else:  # pragma: no cover - plan_module and this list agree
                raise ExportError(f"no stand-in for {p.module}")
            originals.append((p.name, m))
            _set(model, p.name, new)
        yield
    finally:
        for name, m in reversed(originals):
            _set(model, name, m)


class _Wrapper(nn.Module):
    """Positional inputs -> the model's keyword inputs; returns the logits tensor."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names
        cfg = getattr(model, "config", None)
        self.kw = {"use_cache": False} if cfg is not None and hasattr(cfg, "use_cache") else {}
        # torch.onnx.export restores the wrapper's mode afterwards, recursively: a wrapper in
        # training mode would leave the model in training mode (dropout on)
        self.train(model.training)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, xs, strict=True)), **self.kw)
        return out if isinstance(out, torch.Tensor) else out.logits


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return _Wrapper(model, list(inputs))(*inputs.values()).float()


def _has_tied_weights(model: nn.Module) -> bool:
    """Whether two modules share a parameter or a compressed format (a tied LM head)."""
    named = list(model.named_parameters(remove_duplicate=False))
    return len({id(p) for _, p in named}) < len(named) or bool(_head_sharing(model))


def _returns_tensor(model: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether the model returns a bare tensor (LeNet) rather than an output with ``logits``."""
    w = _Wrapper(model, list(inputs))
    with torch.inference_mode():
        return isinstance(model(**inputs, **w.kw), torch.Tensor)


def _cast_dtype(model: nn.Module) -> torch.dtype | None:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    low = dtypes & {torch.float16, torch.bfloat16}
    return next(iter(low)) if len(low) == 1 else None


def _store_floats_as(onnx_model: Any, dtype: torch.dtype) -> None:
    """Store the float32 initializers of a cast model in its dtype, each read through a
    ``Cast`` to float32 (ONNX Runtime's CPU provider computes fp16 / bf16 poorly or not at
    all): the file keeps the cast model's size, the arithmetic stays fp32."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    to = TensorProto.FLOAT16 if dtype == torch.float16 else TensorProto.BFLOAT16
    graph = onnx_model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 1024:
            continue  # small tensors (norm scales, biases) stay float32
        arr = numpy_helper.to_array(init)
        low_name = init.name + "__" + ("fp16" if to == TensorProto.FLOAT16 else "bf16")
        if to == TensorProto.FLOAT16:
            low = numpy_helper.from_array(arr.astype(np.float16), low_name)
        else:
            bits = torch.from_numpy(arr.copy()).to(torch.bfloat16).view(torch.int16).numpy()
            low = helper.make_tensor(
                low_name, TensorProto.BFLOAT16, arr.shape, bits.view(np.uint16).tobytes(), raw=True
            )
        init.CopyFrom(low)
        casts.append(
            helper.make_node("Cast", [low_name], [low_name.rsplit("__", 1)[0]], to=TensorProto.FLOAT)
        )
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(onnx_model)


def _check(
    path: Path,
    model: nn.Module,
    inputs: list[dict[str, torch.Tensor]],
    tolerance: float,
    threads: int | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    from .runtime import OnnxModel

    ort_model = OnnxModel(path, threads=threads, meta=meta)
    worst: dict[str, Any] = {
        "max_abs_diff": 0.0,
        "rel_error": 0.0,
        "top1_agreement": 1.0,
        "tolerance": tolerance,
    }
    agree_n, agree_d = 0, 0
    for feed in inputs:
        with kernels.reference_kernels():  # the stored format's semantics, not this CPU's kernels
            ref = _outputs(model, feed)
        got = ort_model.run_logits(feed)
        if got.shape != ref.shape:
            raise ExportError(f"the ONNX model returned shape {tuple(got.shape)}, torch {tuple(ref.shape)}")
        diff = (got - ref).abs()
        worst["max_abs_diff"] = max(worst["max_abs_diff"], float(diff.max()))
        rel = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
        worst["rel_error"] = max(worst["rel_error"], rel)
        agree_n += int((got.argmax(-1) == ref.argmax(-1)).sum())
        agree_d += ref.argmax(-1).numel()
    worst["top1_agreement"] = agree_n / max(1, agree_d)
    worst["inputs"] = [{k: list(v.shape) for k, v in f.items()} for f in inputs]
    if not worst["rel_error"] <= tolerance:
        raise ExportMismatch(
            f"the ONNX export does not match the model: relative error {worst['rel_error']:.3g} of the "
            f"logits in ONNX Runtime (tolerance {tolerance:.3g}; max abs diff "
            f"{worst['max_abs_diff']:.3g}, top-1 agreement {100 * worst['top1_agreement']:.2f}%); "
            "nothing was written"
        )
    return worst


def default_tolerance(
    planned: list[ops.Planned], accuracy_level: int, cast: torch.dtype | None = None
) -> float:
    """Relative error of the logits an export may have: float-exact forms 1e-4; a float16
    model (torch computes in fp16, ONNX Runtime in fp32) 0.01; static int8 activations,
    MatMulNBits at accuracy level 4 (int8 activations per block) and bfloat16 0.05;
    DynamicQuantizeMatMul (one activation scale per input tensor, where modelpress scales
    each token) 0.1."""
    if any(p.op == "DynamicQuantizeMatMul" for p in planned):
        return 0.1  # one scale for the whole input: MiniLM int8-dynamic measured 0.057
    approx = any(p.op == "QuantizeLinear + MatMulIntegerToFloat" for p in planned)
    approx = approx or (accuracy_level >= 2 and any(p.op == "MatMulNBits" for p in planned))
    approx = approx or any(p.op == NBITS8 for p in planned)
    if approx or cast == torch.bfloat16:
        return 0.05
    return 0.01 if cast == torch.float16 else 1e-4


def _is_export(path: Path) -> bool:
    try:
        meta = json.loads((path / EXPORT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT


def _check_target(path: Path) -> None:
    from ..api import check_directory_target

    check_directory_target(path, kind="ONNX export", is_ours=_is_export, entries=EXPORT_ENTRIES)


def _swap_in(tmp: Path, target: Path) -> None:
    from ..api import _exchange, _fsync_dir

    _fsync_dir(tmp)
    if target.exists():
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    _fsync_dir(target.parent)


def export_onnx(
    model: nn.Module,
    out_dir: str | os.PathLike,
    inputs: dict[str, torch.Tensor],
    *,
    int8_form: str = "auto",
    metadata: dict[str, Any] | None = None,
    **kw: Any,
) -> ExportReport:
    """Export ``model`` (a torch model, plain or compressed by modelpress) to ONNX.

    ``inputs``: one batch of the model's keyword inputs (e.g. ``input_ids`` and
    ``attention_mask``), which fixes the input names; batch and sequence axes stay dynamic.
    Keywords: ``check_inputs`` (batches to compare ONNX Runtime with torch on; default
    ``inputs``), ``opset`` (18..20), ``allow_decoded`` (export formats ONNX cannot hold as
    decoded float32 weights, listed in the report, instead of refusing), ``accuracy_level``
    (MatMulNBits' compute: 0 float, as modelpress's reference; 4 int8 activations per
    block, ONNX Runtime's fast CPU path), ``tolerance`` (see ``default_tolerance``),
    ``tokenizer``, ``threads``, ``constant_folding`` (None: unless the model ties weights,
    which folding would write twice), ``extra_check`` (called with the ONNX model, an
    ``OnnxModel``, before it is kept: what it returns goes into ``export.json`` as
    ``check.task``; an ``ExportError`` it raises stops the export).

    ``int8_form``: how W8A8 dynamic layers (int8-dynamic, SmoothQuant) are written —
    ``dynamic``: ONNX Runtime's DynamicQuantizeMatMul (one activation scale per input
    tensor, its fastest int8 path) with int8 weights; ``dynamic-u8``: the same op with the
    same integers shifted to uint8 (zero point 128), which ONNX Runtime multiplies without
    the int16 saturation its u8 x s8 path has on CPUs without VNNI; ``nbits``: 8-bit
    MatMulNBits (activations quantized per block of each row); ``auto``: the first of
    dynamic, dynamic-u8, nbits that matches the model (LLMs with outlier activations:
    SmolLM2 measured a relative error of 0.58 with DynamicQuantizeMatMul).

    Raises ``ExportError`` when a module has no ONNX form or the export does not match.
    """
    if int8_form not in INT8_FORMS:
        raise ConfigError(f"int8_form must be one of {', '.join(INT8_FORMS)}, got {int8_form!r}")
    if int8_form != "auto" or not any(p.op == "DynamicQuantizeMatMul" for p in plan(model)):
        form = "dynamic" if int8_form == "auto" else int8_form
        return _export_onnx(model, out_dir, inputs, int8_form=form, metadata=metadata, **kw)
    failed: list[str] = []
    for form in auto_int8_forms():
        kw_meta: dict[str, Any] | None
        if failed:
            note = "; ".join(failed) + f"; the int8 layers are written as {INT8_FORM_NAMES[form]}"
            kw_meta = {**(metadata or {}), "int8_fallback": note}
        else:
            note, kw_meta = "", metadata
        try:
            report = _export_onnx(model, out_dir, inputs, int8_form=form, metadata=kw_meta, **kw)
        except ExportMismatch as e:
            if form == "nbits":
                raise
            why = str(e).removesuffix("; nothing was written")
            failed.append(f"{INT8_FORM_NAMES[form]} did not match ({why})")
            continue
        if note:
            report.check["int8_fallback"] = note
        return report
    raise AssertionError("unreachable")  # pragma: no cover


def auto_int8_forms() -> tuple[str, ...]:
    """The order ``int8_form="auto"`` tries: int8 weights first (ONNX Runtime's fastest
    int8 path on every x86 CPU: MiniLM on AVX2, 2.76x torch fp32 against 2.24x with uint8
    weights), then the same integers as uint8 (on CPUs without VNNI its u8 x s8 path sums
    pairs of products in saturating int16, which some models do not survive; u8 x u8
    widens first), then 8-bit MatMulNBits."""
    return ("dynamic", "dynamic-u8", "nbits")


def _export_onnx(
    model: nn.Module,
    out_dir: str | os.PathLike,
    inputs: dict[str, torch.Tensor],
    *,
    check_inputs: list[dict[str, torch.Tensor]] | None = None,
    opset: int = DEFAULT_OPSET,
    allow_decoded: bool = False,
    accuracy_level: int = 4,
    tolerance: float | None = None,
    tokenizer: Any = None,
    metadata: dict[str, Any] | None = None,
    threads: int | None = None,
    extra_check: Callable[[Any], dict[str, Any]] | None = None,
    constant_folding: bool | None = None,
    int8_form: str = "dynamic",
) -> ExportReport:
    """Export ``model`` (a torch model, plain or compressed by modelpress) to ONNX.

    ``inputs``: one batch of the model's keyword inputs (e.g. ``input_ids`` and
    ``attention_mask``), which fixes the input names; batch and sequence axes stay dynamic.
    ``check_inputs``: batches to compare ONNX Runtime with torch on (default: ``inputs``).
    ``allow_decoded``: export formats ONNX cannot hold (codebooks, sparse ...) as decoded
    float32 weights (the report lists them) instead of refusing. ``accuracy_level``:
    MatMulNBits' compute type (0: float, as modelpress's reference; 4: int8 activations per
    block, ONNX Runtime's fast CPU path). Raises ``ExportError`` when a module has no ONNX
    form, or the export does not match within ``tolerance`` (see ``default_tolerance``).
    ``constant_folding``: fold constants at export (None: unless the model ties weights,
    e.g. an embedding and its LM head, which folding would write twice). ``extra_check``:
    called with the ONNX model (an ``OnnxModel``) before it is kept; what it returns goes
    into ``export.json`` (``check.task``), an ``ExportError`` it raises stops the export.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export takes a torch nn.Module, got {type(model).__name__}")
    if (
        not isinstance(inputs, dict)
        or not inputs
        or not all(isinstance(v, torch.Tensor) for v in inputs.values())
    ):
        raise ConfigError("export needs example inputs: a dict of input name -> tensor")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 18 <= opset <= 20:
        raise ConfigError(f"opset must be an integer in 18..20, got {opset!r}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ConfigError(f"accuracy_level must be 0..4, got {accuracy_level!r}")
    t0 = time.perf_counter()
    target = Path(os.path.abspath(out_dir))
    _check_target(target)
    planned = plan(model)
    if int8_form == "nbits":
        # layers whose rows have no block of 16 or 32 columns stay DynamicQuantizeMatMul
        # (uint8 weights)
        tied = _head_sharing(model)
        for p in planned:
            fmt = getattr(model.get_submodule(p.name), "weight", None)
            blocked = isinstance(fmt, AffineQuantized) and ops.nbits_block(fmt, NBITS8_BLOCK) is not None
            if p.op == "DynamicQuantizeMatMul" and blocked:
                p.op = NBITS8
            elif p.op == "Gather (int8) x scale" and blocked and id(fmt) in tied:
                p.op = "Gather (n-bit)"
    refused = [p for p in planned if p.op == "refused"]
    if refused and not allow_decoded:
        first = refused[0]
        raise ExportError(
            f"{len(refused)} module(s) have no ONNX form that keeps their size, e.g. {first.name} "
            f"({first.module}, {first.fmt}): {first.why}. Pass allow_decoded=True (CLI: --allow-decoded) "
            "to export them as decoded float32 weights"
        )
    for p in refused:
        p.op = "decoded float32"
    if constant_folding is None:
        constant_folding = not _has_tied_weights(model)
    was_training = model.training
    model.eval()
    cast = _cast_dtype(model)
    names = list(inputs)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        onnx_path = tmp / ONNX_FILE
        float_model = model
        if cast is not None:  # trace in float32; the weights are stored back in the cast dtype
            import copy

            float_model = copy.deepcopy(model).float()
        u8 = int8_form in ("dynamic-u8", "nbits")
        with _standins(float_model, planned, accuracy_level, u8), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # token inputs (integers): batch and sequence axes; float inputs (images): batch
            axes: dict[str, dict[int, str]] = {
                n: {0: "batch", 1: "sequence"} if v.dim() >= 2 and not v.is_floating_point() else {0: "batch"}
                for n, v in inputs.items()
            }
            sample = _outputs(float_model, inputs)
            axes["logits"] = {0: "batch", 1: "sequence"} if sample.dim() == 3 else {0: "batch"}
            with torch.no_grad():
                torch.onnx.export(
                    _Wrapper(float_model, names),
                    tuple(inputs.values()),
                    str(onnx_path),
                    input_names=names,
                    output_names=["logits"],
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                    # folding writes a transposed copy of a tied weight; ORT's quantize_dynamic
                    # needs it (it quantizes MatMuls whose weight is an initializer)
                    do_constant_folding=constant_folding,
                )
        import onnx

        m = onnx.load(str(onnx_path))
        if cast is not None:
            _store_floats_as(m, cast)
        m.producer_name = "modelpress"
        onnx.save(m, str(onnx_path))
        meta: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "opset": opset,
            "inputs": {n: str(v.dtype).removeprefix("torch.") for n, v in inputs.items()},
            "output": "logits",
            "raw_output": _returns_tensor(model, inputs),
            "accuracy_level": accuracy_level,
            "weights_dtype": None if cast is None else str(cast).removeprefix("torch."),
            "modules": [dataclasses.asdict(p) for p in planned],
            "id2label": getattr(getattr(model, "config", None), "id2label", None),
            **(metadata or {}),
        }
        tol = tolerance if tolerance is not None else default_tolerance(planned, accuracy_level, cast)
        meta["check"] = _check(onnx_path, model, check_inputs or [inputs], tol, threads, meta)
        if extra_check is not None:  # e.g. the task metric, on the file about to be kept
            from .runtime import OnnxModel

            meta["check"]["task"] = extra_check(OnnxModel(onnx_path, threads=threads, meta=meta))
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=1, default=str) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        _swap_in(tmp, target)
    except ModelpressError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"cannot write the export at {out_dir}: {e.strerror or e}") from e
    except Exception as e:  # the exporter's own errors: one line, not its traceback
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(
            f"torch.onnx.export failed on this model: {type(e).__name__}: {str(e)[:400]}"
        ) from e
    finally:
        model.train(was_training)
    size = (target / ONNX_FILE).stat().st_size
    return ExportReport(
        target, opset, size, planned, meta["check"], time.perf_counter() - t0, [p.name for p in refused]
    )


def read_export(path: str | os.PathLike) -> dict[str, Any]:
    """The ``export.json`` of an export directory, or ``ArtifactError``."""
    p = Path(path)
    f = p / EXPORT_FILE
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{p} is not a modelpress ONNX export: no {EXPORT_FILE}") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {f}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ArtifactError(f"{f} is not a modelpress ONNX export description")
    if not isinstance(meta.get("version"), int) or meta["version"] > EXPORT_VERSION:
        raise ArtifactError(
            f"{f}: export version {meta.get('version')!r} is newer than this modelpress reads"
        )
    if not isinstance(meta.get("inputs"), dict) or not meta["inputs"]:
        raise ArtifactError(f"{f}: no inputs are described")
    return meta
