"""Fingerprints of every preset's artifact on tiny models: sha256 of the saved files and of
the loaded model's outputs on fixed inputs.

Run before and after a refactor that must not change behaviour; ``--compare OLD.json``
prints every preset whose bytes or outputs changed::

    python benchmarks/artifact_fingerprints.py -o before.json
    python benchmarks/artifact_fingerprints.py -o after.json --compare before.json

Models (random weights, seeded; no pretrained weights needed): a 2-layer BERT classifier and
a 2-layer Llama built from the packaged MiniLM / SmolLM2 configs, LeNet-300-100 and LeNet-5
trained for a few steps on MNIST-5k. Single-threaded so that results are reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch


def _manifest_bytes(path: Path, work: Path) -> bytes:
    """The manifest as ``save`` writes it, without its integrity digests (added after this
    script's first baseline) and with the work directory, which the models' own paths
    (``_name_or_path``) contain, replaced by ``WORK``."""
    manifest = json.loads(path.read_text())
    manifest.pop("digests", None)
    return json.dumps(manifest, indent=1).replace(str(work), "WORK").encode()


def _tensors_sha(path: Path) -> str:
    """Hash of the stored tensors (names, dtypes, shapes, bytes), not of the file: the
    safetensors header's metadata order is not reproducible across processes."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            t = f.get_tensor(key)
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _out_sha(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> str:
    with torch.no_grad():
        out = model(**inputs)
    t = out if isinstance(out, torch.Tensor) else out.logits
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def _tasks(work: Path):
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from modelpress.data import political_speeches
    from modelpress.data.datasets import TextSplits, rotten_tomatoes
    from modelpress.data.images import ImageSplits, mnist_5k
    from modelpress.models.causal_lm import CausalLMTask
    from modelpress.models.classification import ClassifierTraining, TextClassificationTask
    from modelpress.models.sources import local_source, minilm_source, smollm2_source
    from modelpress.models.vision import ImageClassificationTask, ImageTraining
    from modelpress.training import TrainConfig

    mdir = Path(minilm_source().path)
    tok = AutoTokenizer.from_pretrained(str(mdir))
    cfg = BertConfig.from_pretrained(str(mdir))
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size = 2, 32, 2, 64
    cfg.num_labels = 2
    cfg.id2label, cfg.label2id = {0: "rotten", 1: "fresh"}, {"rotten": 0, "fresh": 1}
    torch.manual_seed(0)
    bert = work / "tiny-bert"
    BertForSequenceClassification(cfg).save_pretrained(str(bert))
    tok.save_pretrained(str(bert))
    full = rotten_tomatoes(seed=0)
    splits = TextSplits(
        full.train.subset(list(range(160))),
        full.validation.subset(list(range(48))),
        full.test.subset(list(range(64))),
        "rt-small",
        0,
    )
    training = ClassifierTraining(train=TrainConfig(epochs=1, lr=1e-3, patience=None), batch_size=16)
    yield "bert", TextClassificationTask(local_source(str(bert)), splits, training=training)

    src = smollm2_source()
    raw = load_gguf_checkpoint(str(Path(src.path) / str(src.gguf_file)), return_tensors=False)["config"]
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    raw.update(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=30522,
        pad_token_id=0,
        bos_token_id=101,
        eos_token_id=102,
    )
    torch.manual_seed(0)
    llama = work / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(**raw)).save_pretrained(str(llama))
    tok.save_pretrained(str(llama))
    text = political_speeches()[:60000]  # a short text: fine-tuning presets stay quick
    yield "llama", CausalLMTask(local_source(str(llama)), text, eval_tokens=512, window=128)

    m = mnist_5k(seed=0)
    small = ImageSplits(
        (m.train[0][:512], m.train[1][:512]),
        (m.validation[0][:128], m.validation[1][:128]),
        (m.test[0][:128], m.test[1][:128]),
        "mnist-small",
        0,
    )
    itrain = ImageTraining(TrainConfig(epochs=1, max_steps=20, lr=2e-3, patience=None), batch_size=64)
    for arch in ("lenet-300-100", "lenet-5"):
        yield arch, ImageClassificationTask(arch, small, training=itrain)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--compare", help="an earlier output to compare with")
    ap.add_argument("--only", default="", help="comma-separated preset names (default: all)")
    ap.add_argument(
        "--models", default="", help="comma-separated: bert, llama, lenet-300-100, lenet-5 (default: all)"
    )
    ap.add_argument("--debug", action="store_true", help="print the traceback of presets that fail")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import os

    from modelpress.api import compress, load, save
    from modelpress.methods.base import PRESETS

    names = [n for n in args.only.split(",") if n] or PRESETS.names()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("MODELPRESS_CACHE", str(work / "cache"))
        wanted = [m for m in args.models.split(",") if m]
        for model_name, task in _tasks(work):
            if wanted and model_name not in wanted:
                continue
            original = task.load_original(progress=False)
            inputs = task.example_inputs(2)
            for preset in names:
                key = f"{model_name}/{preset}"
                t0 = time.perf_counter()
                try:
                    torch.manual_seed(0)
                    model = compress(original, preset, data=task, progress=False)
                    path = save(model, work / "art" / key)
                    rec = {
                        "weights": _tensors_sha(path / "model.safetensors"),
                        "manifest": hashlib.sha256(_manifest_bytes(path / "manifest.json", work)).hexdigest()[
                            :16
                        ],
                        "bytes": len(_manifest_bytes(path / "manifest.json", work)),
                        "outputs": _out_sha(load(path), inputs),
                    }
                except Exception as e:
                    rec = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
                    if args.debug:
                        traceback.print_exc()
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                results[key] = rec
                print(key, rec, flush=True)
    Path(args.output).write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        changed = 0
        for key in sorted(set(old) | set(results)):
            a, b = old.get(key, {}), results.get(key, {})
            a = {k: v for k, v in a.items() if k != "seconds"}
            b = {k: v for k, v in b.items() if k != "seconds"}
            if a != b:
                changed += 1
                print(f"CHANGED {key}: {a} -> {b}")
        print(f"{changed} of {len(set(old) | set(results))} changed")
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
