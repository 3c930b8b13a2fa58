"""A table of architectures: which presets run on torchvision's resnet18, mobilenet_v2,
efficientnet_b0, vgg11 and a small ViT, the artifact bytes, the output agreement with the
original on fixed inputs, and structured channel pruning side by side with Torch-Pruning.

Every model has RANDOM weights (``weights=None``: no pretrained weights ship offline), so
output agreement is a weak proxy for quality: it says how far a method moves the logits of
an untrained network, not what it costs a trained one. Calibration / fine-tuning data is
synthetic: random images labelled with the original model's own top-1 (``SyntheticImages``).

Per preset: ``mp.compress(model, preset, data=synthetic)``, ``mp.save``, the bytes of the
files written (vs the fp32 artifact), ``mp.load`` back (outputs equal?), and on 64 fixed
random images the top-1 agreement and the relative logit error ``|y - y0| / |y0|``
(Frobenius). A preset that refuses shows its reason.

Structured pruning: ``PruneChannelsConfig(fraction=0.5, importance="l2")`` (no fine-tune)
against Torch-Pruning's ``MagnitudePruner`` (L1 magnitude, ``pruning_ratio=0.5``, the
classifier in ``ignored_layers``) on the same random model in the same process: parameters,
MACs (forward hooks, ``conv_linear_macs``; Torch-Pruning's ``count_ops_and_params`` as a
cross-check), and batch-1 latency at 224x224 (the ViT at its image size) timed interleaved
(each round runs original, modelpress, Torch-Pruning in turn; median and p95).

    python benchmarks/architectures.py                       # all five, default presets
    python benchmarks/architectures.py --models resnet18,mobilenet_v2 --presets none --rounds 10
    python benchmarks/architectures.py --presets all --out results/architectures
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import modelpress as mp
from modelpress.machine import cpu_flags, cpu_model
from modelpress.methods.base import PRESETS
from modelpress.methods.structured import PruneChannelsConfig
from modelpress.models.architectures import register_architecture
from modelpress.models.tv import torchvision_architecture, torchvision_models

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0", "vgg11", "vit")
#: a small ViT config (torchvision's VisionTransformer class; vit_b_16 itself is 86M parameters)
VIT = {"image_size": 64, "patch_size": 8, "num_layers": 4, "num_heads": 4, "hidden_dim": 192, "mlp_dim": 768}
#: one or two presets of every family that needs no text task; "all" runs every registered one
DEFAULT_PRESETS = (
    "fp16",
    "bf16",
    "int8-dynamic",
    "int8-static",
    "int8-weight",
    "int4-g128",
    "cluster-4bit",
    "prune-50",
    "prune-2:4",
    "lowrank-svd-20",
    "binary-bwn",
    "ternary-b158",
    "prune-heads-25",
    "prune-ffn-50",
    "prune-channels-50",
)


@register_architecture("bench-torchvision")
class TorchvisionNet(nn.Module):
    """A torchvision architecture (random weights) under a registered name, so its artifacts
    save and load like any modelpress model (``load`` rebuilds it from these arguments)."""

    def __init__(self, arch: str, num_classes: int = 1000) -> None:
        super().__init__()
        self.arch, self.num_classes = arch, num_classes
        if arch == "vit":
            tm = torchvision_models()
            self.net = tm.vision_transformer.VisionTransformer(num_classes=num_classes, **VIT)
            # torchvision zero-initialises the ViT head (all logits 0 untrained): random instead
            nn.init.normal_(self.net.heads.head.weight, std=0.02)
        else:
            self.net = torchvision_architecture(arch, num_classes=num_classes)

    def arch_args(self) -> dict[str, Any]:
        return {"arch": self.arch, "num_classes": self.num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, size: int, n: int = 64, seed: int = 3) -> None:
    """Re-estimate BatchNorm statistics (cumulative average) on ``n`` random images, so the
    random network's activations are normalised instead of vanishing or exploding with depth
    (which would make agreement meaningless and latency depend on denormal arithmetic)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(n // 16):
        model(torch.randn(16, 3, size, size, generator=g))
    model.eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float logits of ``model`` on ``x`` cast to the dtype of its first floating parameter
    (fp16 / bf16 presets keep half-precision weights and expect inputs to match)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return model(x.to(dtype)).float()


class SyntheticImages:
    """Random images labelled with the original model's top-1: calibration and a short
    fine-tune have something to fit, and ``score`` is top-1 agreement with the original."""

    higher_is_better = True

    def __init__(self, original: nn.Module, size: int, n: int = 32, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = {s: torch.randn(n, 3, size, size, generator=g) for s in ("train", "validation")}
        with torch.no_grad():
            self.y = {s: original(x).argmax(1) for s, x in self.x.items()}

    def batches(self, split: str, batch_size: int, *, shuffle_seed: int | None = None) -> Iterator[Any]:
        x, y = self.x[split], self.y[split]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(shuffle_seed or 0))
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def score(self, model: nn.Module, split: str = "validation") -> float:
        was = model.training
        model.eval()
        try:
            return float((model(self.x[split]).argmax(1) == self.y[split]).float().mean())
        finally:
            model.train(was)


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted with forward hooks: a Conv is
    ``out.numel() * in_channels / groups * prod(kernel)``, a Linear ``out.numel() *
    in_features``, a ``MultiheadAttention`` (batch first) ``N*L*4*E^2`` for its projections
    plus ``2*N*L^2*E`` for the two attention products. Norms, activations, pooling and
    additions are not counted (as in Torch-Pruning's count for these layers' weights)."""
    total = 0

    def hook(m: nn.Module, args: Any, out: Any) -> None:
        nonlocal total
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            k = 1
            for s in m.kernel_size:
                k *= s
            total += out.numel() * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        elif isinstance(m, nn.MultiheadAttention):
            q = args[0]
            n, length, e = q.shape if m.batch_first else (q.shape[1], q.shape[0], q.shape[2])
            total += n * length * 4 * e * e + 2 * n * length * length * e

    types = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention)
    # an attention's out_proj is a Linear it never calls as a module: hooks see only real calls
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def agreement(y: torch.Tensor, y0: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, relative Frobenius error of the logits)."""
    top1 = float((y.argmax(1) == y0.argmax(1)).float().mean())
    return top1, float((y.float() - y0).norm() / y0.norm())


def run_presets(
    name: str, model: nn.Module, x: torch.Tensor, size: int, presets: list[str], tmp: Path
) -> list[dict[str, Any]]:
    with torch.no_grad():
        y0 = model(x)
    data = SyntheticImages(model, size)
    fp32_bytes = mp.artifact_bytes(mp.save(model, tmp / f"{name}-fp32"))
    rows = []
    for preset in presets:
        row: dict[str, Any] = {"preset": preset}
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            out = mp.compress(copy.deepcopy(model), preset, data=data, progress=False)
            out.eval()
            path = mp.save(out, tmp / f"{name}-{preset}")
            with torch.no_grad():
                y = run(out, x)
                loaded = mp.load(path)
                row["load_equal"] = bool(torch.equal(run(loaded, x), y))
            row["bytes"] = mp.artifact_bytes(path)
            row["ratio"] = fp32_bytes / row["bytes"]
            row["top1"], row["rel_err"] = agreement(y, y0)
            row["finite"] = bool(torch.isfinite(y).all())
            row["status"] = "runs"
            del out, loaded
        except Exception as e:  # a refusal (ConfigError) or a failure: shown with its reason
            row["status"] = "refused" if isinstance(e, mp.ConfigError) else f"fails ({type(e).__name__})"
            row["reason"] = (str(e).splitlines() or [""])[0][:160]
            if not isinstance(e, mp.ConfigError):
                traceback.print_exc(limit=3)
        row["seconds"] = time.perf_counter() - t0
        print(f"  {name} {preset}: {row['status']} {row.get('reason', '')}", flush=True)
        rows.append(row)
    return [{"preset": "fp32", "status": "runs", "bytes": fp32_bytes, "ratio": 1.0}, *rows]


def classifier(net: nn.Module) -> nn.Module:
    """The last Linear (the classifier head both pruners leave whole)."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)][-1]


def timed_rounds(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, warmup: int = 3) -> dict:
    """Batch-1 latency, interleaved: each round runs every model once in turn (ms)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models.values():
                m(x)
        keys = list(models)
        for r in range(rounds):
            # every round starts with the original; the others run in a rotating order, so no
            # model always follows the big original (cache state) or always goes last
            rest = keys[1:]
            shift = r % len(rest) if rest else 0
            for k in [keys[0], *rest[shift:], *rest[:shift]]:
                t0 = time.perf_counter()
                models[k](x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    ref = times[next(iter(times))]
    for k, ts in times.items():
        # the median of per-round ratios to the first model: robust to a machine whose speed drifts
        ratio = statistics.median(t / r for t, r in zip(ts, ref, strict=True))
        ts = sorted(ts)
        out[k] = {
            "p50_ms": statistics.median(ts),
            "p95_ms": ts[min(len(ts) - 1, int(0.95 * len(ts)))],
            "min_ms": ts[0],  # the least disturbed round: on a busy machine the steadiest figure
            "ratio": ratio,
        }
    return out


def run_structured(
    name: str, wrapper: TorchvisionNet, x: torch.Tensor, lat_x: torch.Tensor, rounds: int
) -> dict:
    import torch_pruning as tp  # after modelpress.models.tv: it may import torchvision itself

    with torch.no_grad():
        y0 = wrapper(x)
    res: dict[str, Any] = {"latency_input": list(lat_x.shape)}
    models: dict[str, nn.Module] = {"original": wrapper.net}
    try:
        t0 = time.perf_counter()
        ours = mp.compress(copy.deepcopy(wrapper), PruneChannelsConfig(fraction=0.5, importance="l2"))
        res["mp_seconds"] = time.perf_counter() - t0
        models["modelpress"] = ours.net
    except Exception as e:
        res["mp_error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    try:
        theirs = copy.deepcopy(wrapper.net)
        t0 = time.perf_counter()
        # Torch-Pruning's own recipe for torchvision's ViT: tell it the heads, then set the
        # dims its pruning changed that the modules keep as plain attributes
        heads = {m: m.num_heads for m in theirs.modules() if isinstance(m, nn.MultiheadAttention)}
        pruner = tp.pruner.MagnitudePruner(
            theirs,
            lat_x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=0.5,
            ignored_layers=[classifier(theirs)],
            **({"num_heads": heads} if heads else {}),
        )
        pruner.step()
        for m in heads:
            m.num_heads = pruner.num_heads[m]
            m.head_dim = m.embed_dim // m.num_heads
        if hasattr(theirs, "hidden_dim") and hasattr(theirs, "conv_proj"):
            theirs.hidden_dim = theirs.conv_proj.out_channels
        res["tp_seconds"] = time.perf_counter() - t0
        models["torch-pruning"] = theirs
    except Exception as e:
        res["tp_error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    for k, m in list(models.items()):
        m.eval()
        try:
            with torch.no_grad():
                m(lat_x)
        except Exception as e:  # a pruned model that no longer runs is a result, not a crash
            res["mp_error" if k == "modelpress" else "tp_error"] = (
                f"the pruned model does not run: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            )
            del models[k]
            continue
        ops, params = tp.utils.count_ops_and_params(m, lat_x)
        with torch.no_grad():
            y = m(x)
        res[k] = {
            "params": n_params(m),
            "macs": conv_linear_macs(m, lat_x),
            "tp_macs": int(ops),
            "tp_params": int(params),
            "finite": bool(torch.isfinite(y).all()),
        }
        res[k]["top1"], res[k]["rel_err"] = agreement(y, y0)
    if "modelpress" in models and "torch-pruning" in models:
        a, b = models["modelpress"].state_dict(), models["torch-pruning"].state_dict()
        res["same_shapes"] = a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    res["latency"] = timed_rounds(models, lat_x, rounds)
    return res


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def markdown(results: dict[str, Any], env: dict[str, Any]) -> str:
    lines = [
        f"Measured by `python benchmarks/architectures.py {env['argv']}` on {env['cpu']} "
        f"(flags: {', '.join(env['flags'])}), {env['threads']} threads, torch {env['torch']}, "
        f"Torch-Pruning {env['torch_pruning']}. The machine was shared with other jobs: timings are noisy. "
        "All weights are RANDOM (torchvision `weights=None`, nothing pretrained ships offline), so "
        "output agreement is a weak proxy; calibration / fine-tune data is synthetic (random images "
        f"labelled by the original's top-1). Presets and agreement at {env['size']}x{env['size']} "
        f"(ViT at its {VIT['image_size']}x{VIT['image_size']}), 64 fixed random images.",
        "",
    ]
    for name, r in results.items():
        if "presets" not in r:
            continue
        lines += [
            f"**{name}** ({r['params']:,} parameters)",
            "",
            "| preset | status | bytes | vs fp32 | top-1 agree | rel. logit err | load == saved |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for row in r["presets"]:
            if row["status"] != "runs":
                lines.append(f"| {row['preset']} | {row['status']}: {row['reason']} | | | | | |")
                continue
            top = f"{row['top1']:.3f}" if "top1" in row else "1"
            err = f"{row['rel_err']:.4f}" if "rel_err" in row else "0"
            load = {True: "yes", False: "NO"}.get(row.get("load_equal", True))
            lines.append(
                f"| {row['preset']} | runs | {fmt_bytes(row['bytes'])} | {row['ratio']:.2f}x "
                f"| {top} | {err} | {load} |"
            )
        lines.append("")
    lines += [
        "Structured channel pruning at 50% (modelpress `PruneChannelsConfig(fraction=0.5, importance='l2')` "
        "vs Torch-Pruning `MagnitudePruner(MagnitudeImportance(p=1), pruning_ratio=0.5)`, classifier "
        "ignored by both, no fine-tune). MACs by forward hooks (conv / linear / attention; Torch-Pruning's "
        "`count_ops_and_params` in brackets); latency batch 1, interleaved rounds, median (p95); "
        "latency cut = 1 - the median of the per-round ratios to the original; "
        "min cut from the fastest round.",
        "",
        "| model | pruner | params | MACs (TP count) | latency ms p50 (p95) | min ms | MACs cut "
        "| latency cut | min cut | top-1 agree | finite |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        s = r.get("structured")
        if not s:
            continue
        base = s["original"]
        for k in ("original", "modelpress", "torch-pruning"):
            if k not in s:
                err = s.get("mp_error" if k == "modelpress" else "tp_error", "")
                lines.append(f"| {name} | {k} | {err} | | | | | | | | |")
                continue
            m, lat = s[k], s["latency"][k]
            cut_macs = 1 - m["macs"] / base["macs"]
            cut_lat = 1 - lat["ratio"]
            cut_min = 1 - lat["min_ms"] / s["latency"]["original"]["min_ms"]
            lines.append(
                f"| {name} | {k} | {m['params']:,} "
                f"| {m['macs'] / 1e6:,.1f} M ({m['tp_macs'] / 1e6:,.1f} M) | "
                f"{lat['p50_ms']:.2f} ({lat['p95_ms']:.2f}) | {lat['min_ms']:.2f} | {cut_macs:.1%} | "
                f"{cut_lat:.1%} | {cut_min:.1%} | "
                f"{m['top1']:.3f} | {'yes' if m['finite'] else 'NO'} |"
            )
        if "same_shapes" in s:
            lines.append(
                f"| {name} | | same shapes as Torch-Pruning: {'yes' if s['same_shapes'] else 'no'} "
                f"(input {'x'.join(map(str, s['latency_input']))}) | | | | | | | | |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--presets", default="default", help="'default', 'all', 'none' or a comma list")
    ap.add_argument("--structured-models", default="resnet18,mobilenet_v2,efficientnet_b0,vgg11,vit")
    ap.add_argument("--size", type=int, default=64, help="image size for presets and agreement")
    ap.add_argument("--latency-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="write results.json and section.md here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # latency must not depend on denormal activations of random weights
    if args.presets == "all":
        presets = [p for p in PRESETS if p != "fp32"]
    elif args.presets == "default":
        presets = list(DEFAULT_PRESETS)
    elif args.presets == "none":
        presets = []
    else:
        presets = [p for p in args.presets.split(",") if p]
    import torch_pruning as tp

    env = {
        "argv": " ".join(a for a in __import__("sys").argv[1:]),
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "threads": args.threads,
        "torch": torch.__version__,
        "torch_pruning": getattr(tp, "__version__", "?"),
        "python": platform.python_version(),
        "size": args.size,
    }
    results: dict[str, Any] = {}
    structured = set(args.structured_models.split(","))
    with tempfile.TemporaryDirectory() as tmpd:
        for name in [m for m in args.models.split(",") if m]:
            torch.manual_seed(0)
            model = TorchvisionNet(name, args.num_classes).eval()
            size = VIT["image_size"] if name == "vit" else args.size
            calibrate_batchnorm(model, size)
            lat = VIT["image_size"] if name == "vit" else args.latency_size
            x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(0))
            lat_x = torch.randn(1, 3, lat, lat, generator=torch.Generator().manual_seed(2))
            r: dict[str, Any] = {"params": n_params(model)}
            t0 = time.perf_counter()
            if presets:
                r["presets"] = run_presets(name, model, x, size, presets, Path(tmpd))
            if name in structured:
                r["structured"] = run_structured(name, model, x, lat_x, args.rounds)
            r["seconds"] = time.perf_counter() - t0
            results[name] = r
            print(f"{name}: {r['seconds']:.0f} s", flush=True)
            if args.out:  # after every model, so a long run leaves what it measured
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "section.md").write_text(markdown(results, env))
            for p in Path(tmpd).iterdir():  # artifacts are measured, not kept
                for f in p.iterdir():
                    f.unlink()
                p.rmdir()
    text = markdown(results, env)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"env": env, "results": results}, indent=1))
        (args.out / "section.md").write_text(text)


if __name__ == "__main__":
    main()
