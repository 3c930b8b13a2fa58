"""The ``modelpress`` command line (thin: parse, call the library, print)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ConfigError, ModelpressError

if TYPE_CHECKING:
    from .models.builtin import ImageOptions
    from .serve.ray_serve import RayConfig

app = typer.Typer(
    help="Compress PyTorch / Hugging Face models and measure what each method buys.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

DEFAULT_METHODS = "fp32,fp16,bf16,int8-dynamic"

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Built-in model (minilm, smollm2, lenet-5, lenet-300-100), a torchvision architecture "
        "(resnet18 ...), a local Hugging Face model directory, or a hub id.",
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="text-classification, causal-lm or image-classification (inferred from the model if omitted).",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Your data: CSV / JSONL with 'text' (and 'label' for classification), .txt for causal LMs; "
        "images as a folder with one sub-folder per class, an .npz file, or a directory of IDX files.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="A .safetensors state dict for a torchvision --model (used as given; without it the "
        "architecture is trained here from random init).",
    ),
]
ImageSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        help="Images are resized to SIZE or HEIGHTxWIDTH (default: the model's; torchvision 224).",
    ),
]
ImageMeanOpt = Annotated[
    str | None,
    typer.Option(
        "--image-mean", help="Per-channel mean of [0, 1] pixels, e.g. 0.5,0.5,0.5 (default: the model's)."
    ),
]
ImageStdOpt = Annotated[
    str | None,
    typer.Option(
        "--image-std", help="Per-channel std of [0, 1] pixels, e.g. 0.5,0.5,0.5 (default: the model's)."
    ),
]
SplitSeedOpt = Annotated[
    int,
    typer.Option("--split-seed", help="Seed of the train / validation / test split of --data images."),
]
# Counts are checked by the library (one ``error:`` line for 0 or -1, as for any bad input).
SeqLenOpt = Annotated[
    int | None,
    typer.Option("--seq-len", help="Tokens per example for timing, >= 1 (default 64, LMs 128)."),
]
EvalTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-tokens", help="Causal LM: tokens in the perplexity slice, >= 512 (one window; 8192)."
    ),
]


def _floats(value: str | None, what: str) -> list[float] | None:
    if value is None:
        return None
    try:
        out = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{what} takes numbers separated by commas, got {value!r}") from None
    if not out:
        raise ConfigError(f"{what} takes numbers separated by commas, got {value!r}")
    return out


def _image_options(size: str | None, mean: str | None, std: str | None, seed: int) -> ImageOptions:
    """The image options as the library takes them; a bad value is one ``ConfigError``."""
    from .models.builtin import ImageOptions

    dims: list[int] | None = None
    if size is not None:
        try:
            dims = [int(v) for v in size.lower().replace(" ", "").split("x")]
        except ValueError:
            raise ConfigError(
                f"--image-size takes SIZE or HEIGHTxWIDTH (e.g. 224 or 32x48), got {size!r}"
            ) from None
        if len(dims) not in (1, 2) or min(dims) < 1:
            raise ConfigError(f"--image-size takes SIZE or HEIGHTxWIDTH (e.g. 224 or 32x48), got {size!r}")
    return ImageOptions(dims, _floats(mean, "--image-mean"), _floats(std, "--image-std"), seed)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers imports torchao where it is installed (the bench extra), which warns at
    # import about its C++ extensions and triton: nothing modelpress uses
    for name in ("torchao", "torchao.kernel.intmm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


_DEBUG = False


def _fail(problem: BaseException | str) -> typer.Exit:
    """One ``error:`` line (exit code 2) for bad input; ``--debug`` adds the traceback."""
    if _DEBUG and isinstance(problem, BaseException):
        import traceback

        err.print("".join(traceback.format_exception(problem)), highlight=False, markup=False)
    message = str(problem) if isinstance(problem, BaseException) else problem
    if isinstance(problem, OSError) and not isinstance(problem, ModelpressError):
        message = f"{problem.strerror or problem}: {problem.filename}" if problem.filename else str(problem)
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(s).name or s).strip("-") or "model"


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error (bad input prints one line).")
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    _quiet_libraries()


@app.command()
def bench(
    model: ModelOpt = "minilm",
    task: TaskOpt = None,
    data: DataOpt = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated method names (see `modelpress methods`) and/or recipe YAML files.",
        ),
    ] = DEFAULT_METHODS,
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = None,
    image_mean: ImageMeanOpt = None,
    image_std: ImageStdOpt = None,
    split_seed: SplitSeedOpt = 0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (default: results/<model>).")
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="auto, cpu or cuda: where quality is evaluated; GPU columns need cuda."
        ),
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads, >= 1 (default: torch's).")
    ] = None,
    seq_len: SeqLenOpt = None,
    eval_tokens: EvalTokensOpt = None,
    memory: Annotated[bool, typer.Option(help="Measure peak RAM in a fresh process per method.")] = True,
    keep_artifacts: Annotated[
        bool, typer.Option(help="Keep the saved artifacts under OUTPUT/artifacts.")
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    tune_allocator: Annotated[
        bool,
        typer.Option(
            help="Keep freed memory for reuse while timing (stable timings; see docs/measurement.md)."
        ),
    ] = True,
    decode_tokens: Annotated[
        int,
        typer.Option(
            "--decode-tokens",
            help="Causal LMs: new tokens of the timed greedy generation (batch 1 and 8); 0 = none.",
        ),
    ] = 32,
    eval_examples: Annotated[
        str,
        typer.Option(
            "--eval-examples",
            help="Quality on the first N test examples of every row, or all; auto: all, unless a "
            "row's dtype is only emulated on this CPU (then the first 800).",
        ),
    ] = "auto",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="torch, or torch,onnxruntime: each method also as its ONNX export in ONNX Runtime "
            "(<method>@ort), with ONNX Runtime's own quantize_dynamic as a peer row.",
        ),
    ] = "torch",
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            min=1,
            help="Timing rounds: every row is timed once per round, round-robin; latency is the median "
            "of the rounds. 1 is a quick look; fewer rounds, less sure ratios.",
        ),
    ] = 4,
    throughput_batch: Annotated[
        int,
        typer.Option(
            "--throughput-batch",
            min=1,
            help="Batch of the CPU throughput column (a large LM at 32 takes long on a small CPU).",
        ),
    ] = 32,
) -> None:
    """Compress the model with each method and print the comparison table (every figure measured)."""
    from .bench.report import write_reports
    from .bench.runner import BenchOptions, run_bench
    from .models.builtin import resolve_model
    from .recipe import resolve_methods

    try:
        recipes = resolve_methods(methods)
        adapter = resolve_model(
            model,
            task=task,
            data=data,
            seq_len=seq_len,
            eval_tokens=eval_tokens,
            weights=weights,
            image=_image_options(image_size, image_mean, image_std, split_seed),
        )
        out = output or Path("results") / _slug(model)
        result = run_bench(
            adapter,
            recipes,
            BenchOptions(
                out,
                device=device,
                threads=threads,
                progress=progress,
                measure_memory=memory,
                keep_artifacts=keep_artifacts,
                tune_allocator=tune_allocator,
                decode_tokens=decode_tokens,
                rounds=rounds,
                throughput_batch=throughput_batch,
                eval_examples=_eval_examples(eval_examples),
                backends=tuple(b.strip() for b in backend.split(",") if b.strip()),
            ),
        )
        command = "modelpress " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        paths = write_reports(result, out, command=command)
    except (ModelpressError, OSError) as e:
        raise _fail(e) from None
    _print_table(result)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False)


def _eval_examples(value: str) -> int | str:
    v = value.strip().lower()
    if v in ("auto", "all"):
        return v
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"--eval-examples must be auto, all or an integer >= 1, got {value!r}") from None


def _print_table(result: dict) -> None:
    from .bench.report import format_row, header_lines

    for line in header_lines(result["env"]):
        console.print(line, highlight=False)
    # Short headers for the terminal (results.md has the full ones); the Model column is
    # the same on every row, so it goes into the title.
    short = (
        "Method",
        "Size",
        "bits/w",
        "CPU p50 ms",
        "CPU p95 ms",
        "CPU thr/s",
        "GPU p50 ms",
        "RAM MB",
        "VRAM MB",
        "Quality",
        "Δ",
        "Agree",
    )
    table = Table(title=f"modelpress bench — {result['env']['model']}")
    for c in short:
        table.add_column(c, justify="left" if c == "Method" else "right", no_wrap=True)
    for r in result["rows"]:
        table.add_row(*format_row(r)[1:])
    wide = Console(width=max(console.width, 160)) if not console.is_terminal else console
    wide.print(table)
    from .bench.report import decode_table

    dec_header, dec_rows = decode_table(result["rows"])
    if dec_rows:
        dt = Table(title="greedy decode (KV cache)")
        for col in dec_header:
            dt.add_column(col, justify="left" if col == "Method" else "right")
        for dec_line in dec_rows:
            dt.add_row(*dec_line)
        wide.print(dt)
    for r in result["rows"]:
        for n in r.get("notes", []):
            console.print(f"  {r['method']}: {n}", highlight=False)


@app.command()
def compress(
    output: Annotated[Path, typer.Argument(help="Directory to write the compressed artifact to.")],
    methods: Annotated[
        str, typer.Option("--methods", help="Method names and/or recipe YAML files, applied in order.")
    ],
    model: ModelOpt = "minilm",
    task: TaskOpt = None,
    data: DataOpt = None,
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = None,
    image_mean: ImageMeanOpt = None,
    image_std: ImageStdOpt = None,
    split_seed: SplitSeedOpt = 0,
) -> None:
    """Compress a model and save the artifact (model.safetensors + manifest.json, tokenizer in tokenizer/,
    an image model's input size, channels, mean / std and class names in preprocessing.json)."""
    from . import api
    from .models.builtin import resolve_model
    from .models.text import check_chat_templates
    from .recipe import Recipe, resolve_methods

    try:
        api.check_save_target(output)  # refused before any work: a foreign dir, '.', /proc ...
        recipe = Recipe()
        for _, r in resolve_methods(methods):
            recipe = recipe + r
        adapter = resolve_model(
            model,
            task=task,
            data=data,
            weights=weights,
            image=_image_options(image_size, image_mean, image_std, split_seed),
        )
        # A tokenizer that cannot be saved (a chat template named '../x') is refused before any
        # work, and again once the original is loaded (which may bring its own tokenizer).
        tok = getattr(adapter, "tokenizer", None)
        check_chat_templates(tok, f"the tokenizer of {model}")
        original = adapter.load_original()
        tok = getattr(adapter, "tokenizer", None)
        check_chat_templates(tok, f"the tokenizer of {model}")
        compressed = api.compress(original, recipe, data=adapter)
        # The tokenizer (an image model: its preprocessing.json) is written into the artifact's
        # temporary directory, before the swap: a failure there leaves no half-written
        # artifact (and an old one as it was).
        extras = adapter.artifact_extras()
        path = api.save(compressed, output, extras=extras)
    except (ModelpressError, OSError) as e:
        raise _fail(e) from None
    console.print(
        f"saved {recipe.describe()} to {path} ({api.artifact_bytes(path) / 1e6:.2f} MB)", highlight=False
    )


@app.command("eval")
def evaluate(
    artifact: Annotated[
        Path, typer.Argument(help="A directory written by `modelpress compress` or `save()`.")
    ],
    model: ModelOpt = "minilm",
    task: TaskOpt = None,
    data: DataOpt = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = None,
    image_mean: ImageMeanOpt = None,
    image_std: ImageStdOpt = None,
    split_seed: SplitSeedOpt = 0,
) -> None:
    """Evaluate a saved artifact on the task and data of --model (agreement with that original)."""
    from . import api
    from .models.builtin import resolve_model

    try:
        dev = str(api._device(device))  # an unknown device is one error line, before any work
        adapter = resolve_model(
            model,
            task=task,
            data=data,
            weights=weights,
            image=_image_options(image_size, image_mean, image_std, split_seed),
        )
        loaded = api.load(artifact, device=dev)
        reference = adapter.evaluate(adapter.load_original().to(dev), device=dev)
        ev = adapter.evaluate(loaded, reference=reference.predictions, device=dev)
    except (ModelpressError, OSError) as e:
        raise _fail(e) from None
    agree = "-" if ev.agreement is None else f"{100 * ev.agreement:.2f}%"
    console.print(
        f"{ev.metric}: {ev.value:.4f} (original {reference.value:.4f}); agreement with the original: {agree}",
        highlight=False,
    )


@app.command()
def export(
    artifact: Annotated[
        Path, typer.Argument(help="A directory written by `modelpress compress` or `save()`.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the export to.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    model: ModelOpt = "minilm",
    task: TaskOpt = None,
    data: DataOpt = None,
    allow_decoded: Annotated[
        bool,
        typer.Option(
            "--allow-decoded",
            help="Export formats ONNX cannot hold (codebooks, sparse ...) as decoded float32 weights.",
        ),
    ] = False,
    accuracy_level: Annotated[
        int,
        typer.Option(
            "--accuracy-level",
            help="MatMulNBits compute: 0 float (exact), 4 int8 activations (ONNX Runtime's fast CPU path).",
        ),
    ] = 4,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset, 18..20.")] = 18,
    check_metric: Annotated[
        bool, typer.Option(help="Also compare the task metric of the ONNX and the torch model.")
    ] = True,
    weights: WeightsOpt = None,
    image_size: ImageSizeOpt = None,
    image_mean: ImageMeanOpt = None,
    image_std: ImageStdOpt = None,
    split_seed: SplitSeedOpt = 0,
) -> None:
    """Export an artifact to ONNX (compressed formats as ONNX Runtime operators), checked in ONNX Runtime."""
    from .deploy import export as export_model
    from .models.builtin import resolve_model

    try:
        adapter = resolve_model(
            model,
            task=task,
            data=data,
            weights=weights,
            image=_image_options(image_size, image_mean, image_std, split_seed),
        )
        report = export_model(
            artifact,
            output,
            format=fmt,
            data=adapter,
            evaluate=check_metric,
            allow_decoded=allow_decoded,
            accuracy_level=accuracy_level,
            opset=opset,
        )
    except (ModelpressError, OSError) as e:
        raise _fail(e) from None
    console.print(report.summary(), highlight=False)
    task_check = report.check.get("task")
    if task_check:
        console.print(
            f"{task_check['metric']}: ONNX Runtime {task_check['onnx']:.4f}"
            f", torch {task_check['torch']:.4f}; agreement {100 * (task_check['agreement'] or 0):.2f}%",
            highlight=False,
        )
    for name in report.decoded:
        console.print(f"  {name}: exported as decoded float32 weights (no ONNX form keeps its size)")


@app.command()
def serve(
    artifact: Annotated[
        Path,
        typer.Argument(
            help="An artifact (modelpress compress / save) or an ONNX export (modelpress export)."
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", help="Texts per batch, at most.")] = 16,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", help="A batch closes when its oldest request waited this long.")
    ] = 10.0,
    bucketing: Annotated[
        str, typer.Option("--bucketing", help="Length buckets: adaptive (from recent traffic), none.")
    ] = "adaptive",
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Queued texts (causal LMs: waiting generations) before 503.")
    ] = 256,
    deadline_s: Annotated[
        float, typer.Option("--deadline", help="Seconds before a request gets 504.")
    ] = 10.0,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads of the model.")] = None,
    max_running: Annotated[
        int, typer.Option("--max-running", help="Causal LMs: generations decoded together per step.")
    ] = 16,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            help="Server processes behind one front (1: one process); --threads is then per replica.",
        ),
    ] = 1,
    routing: Annotated[
        str,
        typer.Option(
            "--routing", help="With --replicas: least-queue (fewest in flight), round-robin, power-of-two."
        ),
    ] = "least-queue",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run --replicas N replicas as a Ray Serve deployment (Ray's queue-aware router) on a "
            "local Ray on 127.0.0.1, or on --ray-address; needs pip install 'modelpress[ray]'.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --ray: join this running Ray cluster (e.g. ray://head:10001 or auto) instead of "
            "starting a local Ray; the artifact path must exist on its nodes.",
        ),
    ] = None,
) -> None:
    """Serve an artifact over HTTP: a classifier / encoder with dynamic batching (POST /v1/classify,
    /v1/embed) or a causal LM with continuous batching (POST /v1/generate); /health, /ready, /metrics."""
    if ray_address is not None and not ray:
        raise _fail("--ray-address needs --ray")
    if ray and routing != "least-queue":
        raise _fail("--routing is for --replicas without --ray; on Ray, Ray Serve's router picks")
    try:
        from .serve import BatchPolicy, DecodePolicy
        from .serve import serve as run_server

        policy = BatchPolicy(
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_ms / 1e3,
            bucketing=bucketing,
            max_queue=max_queue,
        )
        decode = DecodePolicy(max_running=max_running, max_queue=max_queue)
        if ray:  # a Ray Serve deployment (docs/serving.md, "Ray Serve")
            from .serve.ray_serve import RayConfig

            on_ray = RayConfig(
                replicas=replicas, threads=threads, policy=policy, decode=decode, deadline_s=deadline_s
            )
            _serve_on_ray(artifact, on_ray, host=host, port=port, address=ray_address)
            return
        if replicas != 1:  # a front and N replica processes (docs/serving.md, "Replicas")
            from .serve.replicas import FrontConfig, serve_replicas

            front = FrontConfig(
                replicas=replicas,
                routing=routing,
                threads=threads,
                policy=policy,
                decode=decode,
                deadline_s=deadline_s,
            )
            console.print(
                f"serving {artifact} on http://{host}:{port}: {replicas} replicas x {front.replica_threads} "
                f"threads, {routing} routing (docs/serving.md)",
                highlight=False,
            )
            serve_replicas(artifact, host=host, port=port, config=front)
            return
        console.print(f"serving {artifact} on http://{host}:{port} (docs/serving.md)", highlight=False)
        run_server(
            artifact,
            host=host,
            port=port,
            policy=policy,
            threads=threads,
            deadline_s=deadline_s,
            decode=decode,
        )
    except (ModelpressError, OSError) as e:
        raise _fail(e) from None
    except ImportError as e:
        raise _fail(f"serving needs the serve extra (pip install 'modelpress[serve]'): {e}") from None


def _serve_on_ray(artifact: Path, config: RayConfig, *, host: str, port: int, address: str | None) -> None:
    """``modelpress serve --ray``: start (or join) Ray, deploy, say where, block until Ctrl-C."""
    from .serve.ray_serve import RayServer, run_until_interrupted

    # the extra, the options and the artifact's path are checked before anything starts
    server = RayServer(artifact, config, host=host, port=port, address=address)
    for name in ("ray", "ray.serve"):  # their INFO lines would bury ours
        logging.getLogger(name).setLevel(logging.WARNING)
    where = f"the Ray cluster at {address}" if address else "a local Ray on 127.0.0.1 (dashboard off)"
    n = config.replica_threads
    err.print(
        f"starting {config.replicas} Ray Serve replica(s) of {artifact} on {where}: "
        f"{n} thread{'s' if n != 1 else ''} each, up to {config.ongoing} requests in flight per replica, "
        "Ray's power-of-two-choices router (docs/serving.md, Ray Serve)",
        highlight=False,
        soft_wrap=True,
    )

    def ready(url: str) -> None:
        console.print(
            f"serving {artifact} on {url} ({config.replicas} replica(s) on Ray Serve; Ctrl-C stops)",
            highlight=False,
            soft_wrap=True,
        )

    run_until_interrupted(server, on_ready=ready)
    err.print(
        "stopped: Ray Serve" + ("" if address else " and the local Ray") + " shut down", highlight=False
    )


@app.command()
def inspect(artifact: Annotated[Path, typer.Argument(help="An artifact directory.")]) -> None:
    """Show an artifact's recipe, base model, compressed layers and bytes."""
    from . import api
    from .errors import ArtifactError
    from .recipe import Recipe

    try:
        manifest = api._read_manifest(artifact)
        size = api.artifact_bytes(artifact)
        try:
            recipe = Recipe.from_list(manifest["recipe"]).describe()
        except ModelpressError as e:
            raise ArtifactError(f"{artifact}: its recipe cannot be read: {e}") from None
    except (ModelpressError, OSError) as e:
        raise _fail(e) from None
    console.print(
        f"{artifact}: {size / 1e6:.2f} MB · base {manifest['base']['class']} · recipe {recipe}",
        highlight=False,
        markup=False,
    )
    counts: dict[str, int] = {}
    for entry in manifest["modules"].values():
        counts[entry["class"]] = counts.get(entry["class"], 0) + 1
    for cls, n in sorted(counts.items()):
        console.print(f"  {n} × {cls}", highlight=False, markup=False)
    console.print(f"  {len(manifest['tensors'])} tensors, {len(manifest['aliases'])} tied", highlight=False)


@app.command("methods")
def list_methods(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the benchmark method names and the method configs a recipe can use."""
    from .methods.base import CONFIGS, PRESETS

    if as_json:
        console.print_json(
            json.dumps(
                {
                    "presets": {n: p.description for n, p in PRESETS.items()},
                    "configs": CONFIGS.names(),
                }
            )
        )
        return
    table = Table(title="benchmark methods (--methods)")
    table.add_column("name")
    table.add_column("family")
    table.add_column("what it does")
    for name, p in PRESETS.items():
        table.add_row(name, p.family, p.description)
    console.print(table)
    console.print("recipe methods (YAML `method:`): " + ", ".join(CONFIGS.names()), highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
