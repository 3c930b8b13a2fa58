"""Run a model through methods and measure each: the rows of the comparison table.

For every method: compress the original, ``save`` it, ``load`` it back, and measure the
*loaded* artifact (what a user deploys): bytes on disk, task quality and agreement with the
original, CPU latency (batch 1) and throughput (batch 32), GPU latency when CUDA is
present, and the peak memory of a fresh process that loads and runs it.

CPU timing runs after every row is built, round-robin: each round times every row once
(a short burst at batch 1, then one at batch 32), so slow drifts of the machine (other
work, thermal or frequency changes) hit every row alike and the ratios in a table come
from the same conditions. A row's latency is the median over its rounds; the report gives
the spread between rounds and says when the machine was too busy for ratios to mean much.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .. import kernels
from ..api import artifact_bytes, check_save_target, compress, compression_notes, load, save
from ..errors import ConfigError, SaveError
from ..machine import memory_bandwidth_gbs
from ..models.tasks import TaskAdapter
from ..recipe import Recipe
from .env import cpu_flags, environment, tune_allocator
from .measure import DecodeTiming, Timing, measure_memory, time_generate, time_model, weight_bytes_per_token
from .stats import quality_stats, resolution

__all__ = ["ROW_KEYS", "BenchOptions", "run_bench"]

log = logging.getLogger(__name__)

# The keys of every row of results.json (later issues add rows, never change these).
ROW_KEYS = (
    "model",
    "method",
    "recipe",
    "size_bytes",
    "params",
    "bits_per_weight",
    "cpu_latency_ms_p50",
    "cpu_latency_ms_p95",
    "cpu_throughput",
    "gpu_latency_ms_p50",
    "peak_rss_mb",
    "peak_vram_mb",
    "metric",
    "quality",
    "quality_delta",
    "agreement",
)


@dataclasses.dataclass
class BenchOptions:
    output: Path
    device: str = "auto"  # auto | cpu | cuda: where quality is evaluated and GPU columns run
    threads: int | None = None
    progress: bool = True
    measure_memory: bool = True
    keep_artifacts: bool = True
    tune_allocator: bool = True  # see bench.env.tune_allocator
    rounds: int = 4  # round-robin timing rounds (every row timed once per round)
    # the batch of the throughput column (tests time a small one: at 32 x 128 tokens one
    # SmolLM2 forward takes ~40 s on one AVX2 core)
    throughput_batch: int = 32
    # causal LMs: greedy generation of this many new tokens after the seq_len-token prompt,
    # timed in the same rounds at each of decode_batches (0 = no decode timing)
    decode_tokens: int = 32
    # quality on the first N test examples of every row (same ones for all); "auto": all of
    # them, unless a row computes in a dtype this CPU only emulates (see _emulated_dtypes),
    # then the first AUTO_EVAL_EXAMPLES, so the default demo does not spend minutes on them
    eval_examples: int | str | None = None
    # "torch" rows always; "onnxruntime" adds, per method, the row of its ONNX export run in
    # ONNX Runtime ("<method>@ort") and ONNX Runtime's own quantize_dynamic of the fp32 export
    backends: tuple[str, ...] = ("torch",)
    decode_batches: tuple[int, ...] = (1, 8)


def _devices(device: str) -> tuple[torch.device, bool]:
    """(device for quality evaluation, whether to fill the GPU columns)."""
    if not isinstance(device, str) or device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    use_gpu = has_cuda and device != "cpu"
    return torch.device("cuda" if use_gpu else "cpu"), use_gpu


def _output_dirs(output: Any) -> Path:
    """Make ``output`` and ``output/artifacts``; returns the latter, or ``SaveError``."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise ConfigError(f"the benchmark output must be a directory path, got {output!r}")
    art_dir = Path(output) / "artifacts"
    try:
        art_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaveError(f"cannot write the benchmark results to {output}: {e.strerror or e}") from e
    return art_dir


def count_params(model: torch.nn.Module) -> int:
    """Parameters of a model, tied ones counted once."""
    return sum(p.numel() for p in model.parameters())


def run_bench(
    adapter: TaskAdapter, methods: list[tuple[str, Recipe]], options: BenchOptions
) -> dict[str, Any]:
    """Measure every method on ``adapter``'s model and data; returns ``{"env", "rows"}``."""
    labels = [m for m, _ in methods]
    if not labels:
        raise ConfigError("no methods given")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"method names must be unique, got {', '.join(labels)}")
    for label in labels:
        if not isinstance(label, str) or label.strip(".") == "" or any(c in label for c in "/\\\x00"):
            raise ConfigError(f"method name {label!r} cannot name an artifact directory")
    eval_device, use_gpu = _devices(options.device)
    if options.threads is not None and (
        isinstance(options.threads, bool) or not isinstance(options.threads, int) or options.threads < 1
    ):
        raise ConfigError(f"--threads must be an integer >= 1, got {options.threads!r}")
    if not isinstance(options.throughput_batch, int) or options.throughput_batch < 1:
        raise ConfigError(f"throughput_batch must be an integer >= 1, got {options.throughput_batch!r}")
    threads = options.threads or torch.get_num_threads()
    dt = options.decode_tokens
    if isinstance(dt, bool) or not isinstance(dt, int) or dt < 0 or dt == 1:
        raise ConfigError(f"--decode-tokens must be 0 (off) or an integer >= 2, got {dt!r}")
    if not options.decode_batches or any(
        isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in options.decode_batches
    ):
        raise ConfigError(f"decode batch sizes must be integers >= 1, got {options.decode_batches!r}")
    # Where the results go is checked (and made) before any model is loaded or trained: an
    # unwritable output, or an artifact directory that save() would refuse, fails at once.
    art_dir = _output_dirs(options.output)
    for label in labels:
        check_save_target(art_dir / label)
    subset = _eval_subset(adapter, methods, options.eval_examples)
    backends = _backends(options.backends)
    torch.set_num_threads(threads)
    allocator = tune_allocator() if options.tune_allocator else "system default"
    out = Path(options.output)

    t_start = time.perf_counter()
    original = adapter.load_original(progress=options.progress)
    params = count_params(original)
    inputs1 = adapter.example_inputs(1)
    inputs32 = adapter.example_inputs(options.throughput_batch)
    inputs_file = out / "inputs.safetensors"
    # the memory of a row is measured in a fresh process that loads the artifact by itself,
    # which a user's own module (its class never imported by modelpress) cannot do
    fresh_process = bool(getattr(adapter, "fresh_process", True)) and isinstance(inputs1, dict)
    measure_mem = options.measure_memory and fresh_process
    if fresh_process:
        save_file({k: v.contiguous() for k, v in inputs1.items()}, str(inputs_file))
    log.info("evaluating the original %s", adapter.model_name)
    reference = adapter.evaluate(original.to(eval_device), device=eval_device, progress=options.progress)
    original.to("cpu")

    env = environment(
        threads,
        str(eval_device),
        {
            **adapter.describe(),
            "original_quality": reference.value,
            "allocator": allocator,
            "params": params,
        },
    )
    if subset:
        env["eval_subset"] = subset
    # what the test split can resolve: the original's 95 % interval (report header)
    env["quality_resolution"] = resolution(reference)
    if options.measure_memory and not fresh_process:
        env["memory_skipped"] = (
            "no peak memory: a fresh process cannot rebuild this model (its class is the user's), "
            "so the memory columns are empty"
        )
    rows: list[dict[str, Any]] = []
    bar = tqdm(methods, desc="methods", disable=not options.progress, unit="method")
    for label, recipe in bar:
        bar.set_postfix_str(label)
        t0 = time.perf_counter()
        compressed = compress(
            original, recipe, device=eval_device, progress=options.progress, **adapter.compress_kwargs()
        )
        compress_s = time.perf_counter() - t0
        method_notes = compression_notes(compressed)  # what a method reported goes into the table notes
        # the tokenizer (an image model: its preprocessing) goes with each artifact, so a row
        # can be served or exported as it is
        path = save(compressed, art_dir / label, extras=adapter.artifact_extras())
        del compressed
        gc.collect()
        size = artifact_bytes(path)
        model = adapter.load_artifact(path)
        ev = adapter.evaluate(
            model.to(eval_device),
            reference=reference.predictions,
            device=eval_device,
            progress=options.progress,
        )
        model.to("cpu")
        gpu_lat = None
        if use_gpu:
            gpu_lat = time_model(model.to("cuda"), inputs1, "cuda").p50_ms
            model.to("cpu")
        if measure_mem:  # the kernels for the worker's inputs chosen (and cached) here first, so
            _warm_kernels(model, inputs1)  # the worker's peak is the model's, not the tuning's
        mem = measure_memory(path, inputs_file, threads=threads) if measure_mem else {}
        vram = None
        if use_gpu and measure_mem:
            vram = measure_memory(path, inputs_file, device="cuda")["peak_vram_mb"]
        rows.append(
            {
                "model": adapter.model_name,
                "method": label,
                "recipe": recipe.to_list(),
                "size_bytes": size,
                "params": params,
                "bits_per_weight": 8 * size / params,
                "cpu_latency_ms_p50": None,  # timed below, round-robin
                "cpu_latency_ms_p95": None,
                "cpu_throughput": None,
                "gpu_latency_ms_p50": gpu_lat,
                "peak_rss_mb": mem.get("peak_rss_mb"),
                "peak_vram_mb": vram,
                "metric": ev.metric,
                "quality": ev.value,
                "quality_delta": ev.value - reference.value,
                "agreement": ev.agreement,
                # extras (not part of the fixed key set above)
                **quality_stats(reference, ev),  # 95 % interval, paired test of the delta
                "baseline_rss_mb": mem.get("baseline_rss_mb"),
                "compress_seconds": compress_s,
                "method_warnings": method_notes,
                "eval_seconds": ev.seconds,
            }
        )
        if "onnxruntime" in backends:
            rows += _ort_rows(model, rows[-1], adapter, art_dir, reference, inputs_file, options, threads)
        del model
        gc.collect()
    if "onnxruntime" in backends:
        rows += _ort_peer_rows(original, rows, adapter, art_dir, reference, inputs_file, options, threads)
        env["onnxruntime"] = _ort_version()
    prompts = _decode_prompts(adapter, original, options, env)
    _time_rows(
        rows,
        [art_dir / r["method"] for r in rows],
        inputs1,
        inputs32,
        options,
        threads,
        env,
        prompts,
        adapter,
    )
    if not options.keep_artifacts:
        for r in rows:
            shutil.rmtree(art_dir / r["method"], ignore_errors=True)
    _add_notes(rows)
    env["total_seconds"] = time.perf_counter() - t_start
    return {"env": env, "rows": rows}


BACKENDS = ("torch", "onnxruntime")
ORT_SUFFIX = "@ort"
ORT_PEER = "ort-quantize-dynamic"


def _backends(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, (tuple, list)) or not value or any(v not in BACKENDS for v in value):
        raise ConfigError(f"--backend must be a comma-separated list of {', '.join(BACKENDS)}, got {value!r}")
    if "torch" not in value:
        raise ConfigError("--backend must include torch (the rows every other backend is compared with)")
    if "onnxruntime" in value:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--backend onnxruntime needs onnx and onnxruntime: pip install 'modelpress[onnx]'"
            ) from None
    return tuple(value)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _is_export(path: Path) -> bool:
    from ..deploy.onnx import EXPORT_FILE

    return (path / EXPORT_FILE).is_file()


def _load_row(path: Path, threads: int, adapter: TaskAdapter | None = None) -> torch.nn.Module:
    """The model a row measures: a modelpress artifact (loaded by the adapter: a user's own
    module goes into a fresh instance), or an ONNX export in ONNX Runtime."""
    if _is_export(path):
        from ..deploy import OnnxModel

        return OnnxModel(path, threads=threads)
    return (adapter.load_artifact(path) if adapter is not None else load(path)).to("cpu")


def _ort_row(
    base: dict[str, Any],
    method: str,
    path: Path,
    onnx_model: torch.nn.Module,
    adapter: TaskAdapter,
    reference: Any,
    inputs_file: Path,
    options: BenchOptions,
    threads: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    from ..deploy.onnx import ONNX_FILE

    ev = adapter.evaluate(
        onnx_model, reference=reference.predictions, device="cpu", progress=options.progress
    )
    mem = measure_memory(path, inputs_file, threads=threads) if options.measure_memory else {}
    size = (path / ONNX_FILE).stat().st_size
    return {
        **{k: base[k] for k in ("model", "recipe", "params", "metric")},
        "method": method,
        "size_bytes": size,
        "bits_per_weight": 8 * size / base["params"],
        "cpu_latency_ms_p50": None,
        "cpu_latency_ms_p95": None,
        "cpu_throughput": None,
        "gpu_latency_ms_p50": None,
        "peak_rss_mb": mem.get("peak_rss_mb"),
        "peak_vram_mb": None,
        "quality": ev.value,
        "quality_delta": ev.value - reference.value,
        "agreement": ev.agreement,
        **quality_stats(reference, ev),
        "baseline_rss_mb": mem.get("baseline_rss_mb"),
        "backend": "onnxruntime",
        "method_warnings": [],
        "eval_seconds": ev.seconds,
        **extra,
    }


def _ort_rows(
    model: torch.nn.Module,
    base: dict[str, Any],
    adapter: TaskAdapter,
    art_dir: Path,
    reference: Any,
    inputs_file: Path,
    options: BenchOptions,
    threads: int,
) -> list[dict[str, Any]]:
    """The ONNX Runtime row of one method: its export (checked against torch), measured
    like the torch rows; [] with a note on the torch row where the format has no ONNX form."""
    from ..deploy import ExportError, OnnxModel, export_onnx

    label = base["method"]
    path = art_dir / (label + ORT_SUFFIX)
    try:
        report = export_onnx(
            model,
            path,
            adapter.example_inputs(2),
            check_inputs=[adapter.example_inputs(2), adapter.example_inputs(8)],
            threads=threads,
            tokenizer=getattr(adapter, "tokenizer", None),
        )
    except ExportError as e:
        base["method_warnings"] = [*base.get("method_warnings", []), f"no ONNX Runtime row: {e}"]
        return []
    ops = sorted({p.op for p in report.modules})
    extra = {
        "compress_seconds": report.seconds,
        "export_check": {
            k: report.check[k] for k in ("max_abs_diff", "rel_error", "tolerance", "top1_agreement")
        },
        "onnx_ops": ", ".join(ops),
    }
    onnx_model = OnnxModel(path, threads=threads)
    return [
        _ort_row(
            base,
            label + ORT_SUFFIX,
            path,
            onnx_model,
            adapter,
            reference,
            inputs_file,
            options,
            threads,
            extra,
        )
    ]


def _ort_peer_rows(
    original: torch.nn.Module,
    rows: list[dict[str, Any]],
    adapter: TaskAdapter,
    art_dir: Path,
    reference: Any,
    inputs_file: Path,
    options: BenchOptions,
    threads: int,
) -> list[dict[str, Any]]:
    """ONNX Runtime's own ``quantize_dynamic`` (int8 weights, its defaults) of the fp32
    export: the peer a user would reach for, measured in the same run."""
    import json

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..deploy import OnnxModel, export_onnx
    from ..deploy.onnx import EXPORT_FILE, ONNX_FILE

    base = next((r for r in rows if r["method"] == "fp32" + ORT_SUFFIX), None)
    if base is None:
        return []
    out = art_dir / ORT_PEER
    tmp = art_dir / f".{ORT_PEER}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    # the fp32 export with constants folded: quantize_dynamic quantizes the MatMuls whose
    # weight is an initializer (not a Transpose of one)
    src = art_dir / f".{ORT_PEER}.fp32-{os.getpid()}"
    export_onnx(original, src, adapter.example_inputs(2), constant_folding=True, threads=threads)
    tmp.mkdir()
    quantize_dynamic(str(src / ONNX_FILE), str(tmp / ONNX_FILE), weight_type=QuantType.QInt8)
    meta = json.loads((src / EXPORT_FILE).read_text())
    shutil.rmtree(src, ignore_errors=True)
    meta["modules"] = [{"op": "onnxruntime.quantization.quantize_dynamic (QInt8, defaults)"}]
    (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    extra = {"compress_seconds": time.perf_counter() - t0, "onnx_ops": "onnxruntime quantize_dynamic (QInt8)"}
    peer = _ort_row(
        base,
        ORT_PEER,
        out,
        OnnxModel(out, threads=threads),
        adapter,
        reference,
        inputs_file,
        options,
        threads,
        extra,
    )
    peer["recipe"] = [{"method": "onnxruntime.quantize_dynamic", "weight_type": "QInt8"}]
    return [peer]


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


AUTO_EVAL_EXAMPLES = 800


def _emulated_dtypes(methods: list[tuple[str, Recipe]]) -> dict[str, str]:
    """{method: dtype} for the rows that compute in a float dtype this CPU has no native
    matmul for (float16 without avx512_fp16 / amx_fp16, bfloat16 without avx512_bf16 /
    amx_bf16): torch emulates those, several times slower than fp32."""
    flags = set(cpu_flags())
    native = {"float16": {"avx512_fp16", "amx_fp16"}, "bfloat16": {"avx512_bf16", "amx_bf16"}}
    out = {}
    for label, recipe in methods:
        for step in recipe.to_list():
            dtype = str(step.get("dtype")) if step.get("method") == "cast" else ""
            if dtype in native and not flags & native[dtype]:
                out[label] = dtype
    return out


def _eval_subset(adapter: TaskAdapter, methods: list[tuple[str, Recipe]], eval_examples: Any) -> str | None:
    """Apply ``--eval-examples`` to the adapter; returns the report's sentence, or None."""
    if eval_examples in (None, "all"):
        return None
    if eval_examples == "auto":
        slow = _emulated_dtypes(methods)
        total = adapter.eval_size()
        if not slow or total is None or total <= AUTO_EVAL_EXAMPLES:
            return None
        what = adapter.limit_evaluation(AUTO_EVAL_EXAMPLES)
        rows = ", ".join(f"{m} ({d})" for m, d in slow.items())
        return (
            f"quality of every row on {what}: this CPU only emulates the dtype of {rows}, which would "
            "spend minutes on the full set (`--eval-examples all` evaluates all of them)"
        )
    if isinstance(eval_examples, bool) or not isinstance(eval_examples, int) or eval_examples < 1:
        raise ConfigError(f"--eval-examples must be auto, all or an integer >= 1, got {eval_examples!r}")
    if adapter.eval_size() is None:
        raise ConfigError(f"--eval-examples applies to tasks that count test examples, not {adapter.task}")
    what = adapter.limit_evaluation(eval_examples)
    return f"quality of every row on {what}" if what else None


def _warm_kernels(model: torch.nn.Module, inputs: Any) -> None:
    """Run the memory worker's inputs once here, on CPU: the autotuner times its candidates
    (each with its packed copy alive for a moment) in this process and caches the choices,
    so the fresh worker process only looks them up, as a user's second process would."""
    if not isinstance(inputs, dict):
        return
    from .worker import memory_inputs

    with torch.inference_mode():
        for i, feed in enumerate(memory_inputs(inputs)):
            try:
                model(**feed)
            except Exception:
                if i == 0:
                    raise


def _decode_prompts(
    adapter: TaskAdapter, original: torch.nn.Module, options: BenchOptions, env: dict[str, Any]
) -> dict[int, dict[str, torch.Tensor]]:
    """The prompts of the decode timing (one per batch size), {} where there is none; the
    machine's memory bandwidth goes into the report header with them."""
    if not adapter.generates or not options.decode_tokens:
        return {}
    limit = getattr(getattr(original, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and adapter.seq_len + options.decode_tokens > limit:
        env["decode_skipped"] = (
            f"no decode timing: a {adapter.seq_len}-token prompt + {options.decode_tokens} new tokens "
            f"passes the model's {limit} positions"
        )
        return {}
    prompts = {b: adapter.example_inputs(b) for b in sorted(set(options.decode_batches))}
    env["memory_bandwidth_gbs"] = memory_bandwidth_gbs()
    env["decode"] = (
        f"greedy generate with the KV cache: {adapter.seq_len}-token prompt + {options.decode_tokens} "
        f"new tokens, batch {', '.join(map(str, prompts))}"
    )
    return prompts


def _time_rows(
    rows: list[dict[str, Any]],
    paths: list[Path],
    inputs1: dict[str, torch.Tensor],
    inputs32: dict[str, torch.Tensor],
    options: BenchOptions,
    threads: int,
    env: dict[str, Any],
    prompts: dict[int, dict[str, torch.Tensor]] | None = None,
    adapter: TaskAdapter | None = None,
) -> None:
    """CPU latency and throughput of every row, round-robin over ``options.rounds``; for
    causal LMs (``prompts``) also greedy decode tokens/s and time to first token."""
    rounds = max(1, int(options.rounds))
    prompts = prompts or {}
    models = []
    for path in paths:
        m = _load_row(path, threads, adapter)
        time_model(m, inputs1, "cpu", warmup=2, min_runs=1, min_seconds=0.0)  # kernels chosen here
        if hasattr(m, "generate"):  # ONNX exports have no KV-cache graph: no decode timing
            for p in prompts.values():  # kernels for the prefill and the decode steps' row counts
                time_generate(m, p, 2)
        models.append(m)
    load_before = _load_average()
    lat: list[list[float]] = [[] for _ in rows]
    thr: list[list[float]] = [[] for _ in rows]
    per_round: list[list[float]] = [[] for _ in rows]
    decode: list[dict[int, list[DecodeTiming]]] = [{b: [] for b in prompts} for _ in rows]
    bar = tqdm(range(rounds), desc="timing (round-robin)", disable=not options.progress, unit="round")
    for _ in bar:
        for i, m in enumerate(models):
            t1 = time_model(m, inputs1, "cpu", warmup=1, min_runs=5, min_seconds=0.4, max_seconds=4.0)
            lat[i] += t1.times_s
            per_round[i].append(t1.p50_ms)
            t32 = time_model(m, inputs32, "cpu", warmup=1, min_runs=2, min_seconds=0.0, max_seconds=6.0)
            thr[i] += t32.times_s
            for b, p in prompts.items() if hasattr(m, "generate") else ():
                decode[i][b].append(time_generate(m, p, options.decode_tokens))
    load_after = _load_average()
    bw = env.get("memory_bandwidth_gbs")
    for i, r in enumerate(rows):
        if not prompts:
            break
        if not hasattr(models[i], "generate"):
            continue
        wb = weight_bytes_per_token(models[i])
        r["weight_bytes_per_token"] = wb
        bound = bw * 1e9 / wb if bw and wb else None
        r["decode_bound_tokens_per_s"] = bound  # per sequence: every step reads every weight once
        for b, ts in decode[i].items():
            tps = statistics.median(t.tokens_per_s for t in ts)
            r[f"decode_tokens_per_s_b{b}"] = tps
            r[f"ttft_ms_b{b}"] = 1e3 * statistics.median(t.ttft_s for t in ts)
            r[f"decode_bound_share_b{b}"] = tps / b / bound if bound else None
    for i, r in enumerate(rows):
        t1, t32 = Timing(tuple(lat[i])), Timing(tuple(thr[i]))
        r["cpu_latency_ms_p50"] = float(torch.tensor(per_round[i]).median())
        r["cpu_latency_ms_p95"] = t1.p95_ms
        r["cpu_throughput"] = options.throughput_batch / (t32.p50_ms / 1e3)
        r["latency_runs"], r["throughput_runs"] = t1.runs, t32.runs
        r["latency_rounds_ms"] = [round(v, 3) for v in per_round[i]]
        r["latency_round_spread"] = (max(per_round[i]) - min(per_round[i])) / r["cpu_latency_ms_p50"]
        r["kernels"] = r.get("onnx_ops") or _kernel_summary(models[i])
    env["timing"] = f"round-robin, {rounds} rounds; latency = median of the rounds' medians"
    env["throughput_batch"] = options.throughput_batch
    env["load_average"] = [load_before, load_after]
    busy = [x for x in (load_before, load_after) if x is not None and x > threads + 0.75]
    spreads = sorted(r["latency_round_spread"] for r in rows)
    env["busy"] = bool(busy) or (bool(spreads) and spreads[len(spreads) // 2] > 0.25)
    del models
    gc.collect()


def _kernel_summary(model: torch.nn.Module) -> str:
    """Which kernels the row's compressed layers ran (op: kernel xN), '' for a plain model."""
    used = kernels.used(model)
    parts = []
    for op, names in sorted(used.items()):
        parts.append(
            op + ": " + ", ".join(f"{n} x{c}" for n, c in sorted(names.items(), key=lambda kv: -kv[1]))
        )
    return "; ".join(parts)


def _add_notes(rows: list[dict[str, Any]]) -> None:
    """Measured, not typed: speed relative to the fp32 row, and why a row is slow."""
    base = next((r for r in rows if r["method"] == "fp32"), None)
    flags = set(cpu_flags())
    for r in rows:
        notes: list[str] = []
        if base is not None and r is not base:
            ratio = base["cpu_latency_ms_p50"] / r["cpu_latency_ms_p50"]
            r["cpu_speedup"] = ratio
            if ratio >= 1.05:
                notes.append(f"{ratio:.2f}x faster than fp32 on CPU at batch 1")
            elif ratio <= 0.95:
                notes.append(f"slower here: {ratio:.2f}x fp32's speed at batch 1 on this CPU")
                why = ""
                dtypes = {str(m.get("dtype")) for m in r["recipe"] if m.get("method") == "cast"}
                if "float16" in dtypes and not flags & {"avx512_fp16", "amx_fp16"}:
                    why = " (this CPU has no native float16 matmul: no avx512_fp16 / amx_fp16)"
                elif "bfloat16" in dtypes and not flags & {"avx512_bf16", "amx_bf16"}:
                    why = " (this CPU has no native bfloat16 matmul: no avx512_bf16 / amx_bf16)"
                if why:
                    notes.append(why.strip(" ()"))
        for key in sorted(k for k in r if k.startswith("decode_tokens_per_s_b")):
            b = key.removeprefix("decode_tokens_per_s_b")
            if base is None or r is base or not base.get(key) or not r.get(key):
                continue
            ratio = r[key] / base[key]
            r[f"decode_speedup_b{b}"] = ratio
            if ratio <= 0.95:
                notes.append(f"slower here: decode at batch {b} at {ratio:.2f}x fp32's tokens/s on this CPU")
            elif ratio >= 1.05:
                notes.append(f"decode at batch {b}: {ratio:.2f}x fp32's tokens/s")
        if r.get("kernels"):
            notes.append(f"kernels: {r['kernels']}")
        notes += r.get("method_warnings") or []
        r["notes"] = notes
