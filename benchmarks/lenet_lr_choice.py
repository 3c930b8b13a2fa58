"""Learning rate of the LeNet originals, chosen on the *validation* split of MNIST-5k.

Trains each LeNet with AdamW at lr 1e-3 and 3e-3 (40 epochs, best validation epoch kept)
in a throw-away cache and prints validation accuracy (test accuracy shown for reference
only; it did not decide).

    python benchmarks/lenet_lr_choice.py
"""

from __future__ import annotations

import os
import tempfile

from modelpress.data.images import mnist_5k
from modelpress.models.vision import ImageClassificationTask, ImageTraining
from modelpress.training import TrainConfig


def main() -> None:
    os.environ["MODELPRESS_CACHE"] = tempfile.mkdtemp(prefix="lenet-lr-")
    splits = mnist_5k(seed=0)
    print("| model | lr | validation accuracy | test accuracy |\n|---|---|---|---|")
    for arch in ("lenet-300-100", "lenet-5"):
        for lr in (1e-3, 3e-3):
            cfg = TrainConfig(
                epochs=40, lr=lr, weight_decay=1e-4, patience=None, warmup_ratio=0.0, grad_clip=None
            )
            task = ImageClassificationTask(arch, splits, training=ImageTraining(cfg))
            model = task.load_original(progress=False)
            val, test = task.score(model, "validation"), task.score(model, "test")
            print(f"| {arch} | {lr:g} | {val:.4f} | {test:.4f} |")


if __name__ == "__main__":
    main()
