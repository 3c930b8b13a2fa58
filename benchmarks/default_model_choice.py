"""Why the default classifier fine-tunes all of MiniLM instead of training a head only.

Measures, on the default Rotten Tomatoes split, (a) a logistic-regression head on frozen
mean-pooled all-MiniLM-L6-v2 sentence embeddings (the cheap option), against (b) the
default original: MiniLM fine-tuned end to end for one epoch (from the user cache; trained
first if missing). Prints test accuracy and the time each takes on this machine.

    python benchmarks/default_model_choice.py
"""

from __future__ import annotations

import json
import time

import torch
from sklearn.linear_model import LogisticRegression

from modelpress.bench.env import cpu_model
from modelpress.models.builtin import resolve_model
from modelpress.models.cache import cache_dir, cache_key


@torch.no_grad()
def _embed(encoder, task, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats, labels, index = [], [], []
    for b in task.batches(split, 64):
        h = encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        mask = b["attention_mask"].unsqueeze(-1).float()
        feats.append((h * mask).sum(1) / mask.sum(1))
        labels.append(b["labels"])
        index.append(b["index"])
    return torch.cat(feats), torch.cat(labels), torch.cat(index)


def main() -> None:
    from transformers import AutoModel

    task = resolve_model("minilm")
    print(f"CPU: {cpu_model()}; {torch.get_num_threads()} threads")
    cached = (cache_dir() / "classifiers" / cache_key(task.cache_parts()) / ".complete").exists()
    t0 = time.perf_counter()
    original = task.load_original()
    t_ft = time.perf_counter() - t0
    acc_ft = task.evaluate(original, progress=False).value
    history = "cached" if cached else f"trained now in {t_ft:.0f} s"

    encoder = AutoModel.from_pretrained(task.source.path, use_kernels=False).eval()
    t0 = time.perf_counter()
    x_tr, y_tr, _ = _embed(encoder, task, "train")
    x_te, y_te, _ = _embed(encoder, task, "test")
    best = max(
        (
            LogisticRegression(C=c, max_iter=3000)
            .fit(x_tr.numpy(), y_tr.numpy())
            .score(x_te.numpy(), y_te.numpy()),
            c,
        )
        for c in (0.1, 1.0, 10.0)
    )
    t_head = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "head_only_accuracy": round(best[0], 4),
                "head_only_C": best[1],
                "head_only_seconds": round(t_head, 1),
                "fine_tuned_accuracy": round(acc_ft, 4),
                "fine_tuned": history,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
