"""A CLIP-style dual encoder (text tower + vision tower) compressed by int8 / int4 /
clustering: zero-shot accuracy and image-text similarity agreement with the original.

No pretrained CLIP ships offline here, so the dual encoder is trained in this run: a small
``transformers.CLIPModel`` built from a config (vision: ViT on 28x28 images in 7x7 patches;
text: a causal transformer over the MiniLM tokenizer's vocabulary, which ships offline),
trained with CLIP's contrastive loss on MNIST-5k's training digits paired with captions
("a handwritten seven", "the number seven", ...). It is a weak stand-in for a real CLIP (a
toy vocabulary of 10 concepts), but a real dual encoder with a real task metric:
zero-shot classification of the 1,000 test digits by the prompt "a photo of the digit
<name>", and the full image x text similarity matrix to compare with the original's.

Every compressed model is saved, its bytes on disk counted, loaded back, and the loaded
artifact is what is measured. Both towers and both projections are compressed.

    python benchmarks/clip_towers.py [--steps 400] [--methods fp32,int8-dynamic,int4-g128,cluster-4bit]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import modelpress as mp
from modelpress.api import artifact_bytes
from modelpress.data.images import mnist_5k
from modelpress.machine import cpu_flags, cpu_model
from modelpress.models.sources import minilm_source

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten {}", "the number {}", "an image of a {}", "a photo of the digit {}", "digit {}"]
PROMPT = "a photo of the digit {}"
SEQ = 12


def build(vocab: int, eos: int, pad: int, bos: int) -> Any:
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=SEQ, eos_token_id=eos, pad_token_id=pad,
        bos_token_id=bos,
    )  # fmt: skip
    vision = dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        image_size=28, patch_size=7, num_channels=1,
    )  # fmt: skip
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    torch.manual_seed(0)
    return CLIPModel(cfg).eval()


def tokens(tok: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.1307) / 0.3081


def train(model: Any, tok: Any, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    captions = {
        (c, t): tokens(tok, [tpl.format(WORDS[c])]) for c in range(10) for t, tpl in enumerate(TEMPLATES)
    }
    losses = []
    model.train()
    for step in range(steps):
        idx = torch.randint(len(images), (128,), generator=g)
        tpl = torch.randint(len(TEMPLATES), (128,), generator=g)
        batch = [captions[(int(labels[i]), int(t))] for i, t in zip(idx, tpl, strict=True)]
        ids = torch.cat([b["input_ids"] for b in batch])
        mask = torch.cat([b["attention_mask"] for b in batch])
        # one caption per class in the batch is the positive of every image of that class:
        # soft targets over same-class captions (CLIP's loss assumes distinct pairs)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=normalise(images[idx]))
        same = (labels[idx][:, None] == labels[idx][None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (
            F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def measure(model: Any, tok: Any, images: torch.Tensor) -> torch.Tensor:
    """The similarity logits of every test image with the 10 class prompts (n, 10)."""
    t = tokens(tok, [PROMPT.format(w) for w in WORDS])
    out = model(**t, pixel_values=normalise(images))
    return out.logits_per_image.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--methods", default="fp32,int8-dynamic,int8-weight,int4-g128,cluster-4bit")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(minilm_source().path)
    splits = mnist_5k(seed=0)
    x_train, y_train = splits.train
    x_test, y_test = splits.test
    model = build(tok.vocab_size, tok.sep_token_id, tok.pad_token_id, tok.cls_token_id)
    t0 = time.perf_counter()
    losses = train(model, tok, x_train, y_train, args.steps)
    train_s = time.perf_counter() - t0
    ref = measure(model, tok, x_test)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            compressed = mp.compress(model, name, progress=False)
            path = Path(tmp) / name
            mp.save(compressed, path)
            loaded = mp.load(path)
            got = measure(loaded, tok, x_test)
            acc = float((got.argmax(1) == y_test).float().mean())
            agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
            p, q = F.log_softmax(ref, 1), F.log_softmax(got, 1)
            kl = float(F.kl_div(q, p, log_target=True, reduction="batchmean"))
            rel = float((got - ref).norm() / ref.norm())
            rows.append((name, artifact_bytes(path), acc, agree, rel, kl, mp.compression_notes(compressed)))
    print(f"CPU: {cpu_model()}, flags {cpu_flags()}, 2 threads")
    print(f"trained {args.steps} steps in {train_s:.0f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print()
    base_bytes, base_acc = rows[0][1], rows[0][2]
    print(
        "| Method | Size on disk | vs fp32 | Zero-shot acc | Δ vs fp32 | Top-1 agreement "
        "| Rel. error of logits | KL |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, size, acc, agree, rel, kl, _ in rows:
        print(
            f"| {name} | {size / 1e6:.2f} MB | {base_bytes / size:.1f}x smaller | {acc:.2%} | "
            f"{(acc - base_acc) * 100:+.2f} pt | {agree:.2%} | {rel:.4f} | {kl:.5f} |"
        )
    for name, *_, notes in rows:
        for n in notes:
            print(f"- {name}: {n}")


if __name__ == "__main__":
    main()
