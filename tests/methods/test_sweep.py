"""Registry-wide sweep: every registered preset, on a tiny BERT classifier, a tiny Llama and
a LeNet, either compresses, saves and loads back with outputs torch.equal to the in-memory
model's, or refuses with one clear ModelpressError (a preset that does not apply to that
model, e.g. pruning a weight tied to the embeddings)."""

from __future__ import annotations

import pytest
import torch

import modelpress as mp
from modelpress.data import political_speeches
from modelpress.data.datasets import TextSplits
from modelpress.data.images import ImageSplits, mnist_5k
from modelpress.methods.base import PRESETS
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import ClassifierTraining, TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.models.vision import ImageClassificationTask, ImageTraining
from modelpress.training import TrainConfig

# presets that must work on each model (the others may refuse, with a ModelpressError)
MUST_WORK = {
    # deep-compression clusters conv layers; deep-compression-fc wants 32 clusters per layer
    # prune-channels-50 prunes CNN / MLP channels (transformers: prune-heads / prune-ffn)
    "bert": set(PRESETS.names()) - {"deep-compression", "deep-compression-fc", "prune-channels-50"},
    "lenet-5": {
        "fp32",
        "fp16",
        "int8-dynamic",
        "cluster-4bit",
        "int4-g128",
        "prune-50",
        "deep-compression",
        "prune-channels-50",
    },
    "llama": {"fp32", "bf16", "int8-dynamic", "int4-g128", "gptq-4bit", "awq-4bit", "cluster-4bit", "nf4"},
}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, bert_config, llama_config, minilm_dir, small_splits):
    from transformers import AutoTokenizer, BertForSequenceClassification, LlamaForCausalLM

    root = tmp_path_factory.mktemp("sweep")
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    torch.manual_seed(0)
    bert = BertForSequenceClassification(bert_config)
    bert.config.id2label, bert.config.label2id = {0: "rotten", 1: "fresh"}, {"rotten": 0, "fresh": 1}
    bert.save_pretrained(str(root / "bert"))
    tok.save_pretrained(str(root / "bert"))
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config).save_pretrained(str(root / "llama"))
    tok.save_pretrained(str(root / "llama"))
    m = mnist_5k(seed=0)
    images = ImageSplits(
        (m.train[0][:256], m.train[1][:256]),
        (m.validation[0][:64], m.validation[1][:64]),
        (m.test[0][:64], m.test[1][:64]),
        "mnist-tiny",
        0,
    )
    cut = TextSplits(small_splits.train, small_splits.validation, small_splits.test, "rt-small", 0)
    training = ClassifierTraining(train=TrainConfig(epochs=1, lr=1e-3, patience=None), batch_size=16)
    return {
        "bert": TextClassificationTask(local_source(str(root / "bert")), cut, training=training),
        "llama": CausalLMTask(
            local_source(str(root / "llama")), political_speeches()[:12000], eval_tokens=256, window=64
        ),
        "lenet-5": ImageClassificationTask(
            "lenet-5",
            images,
            training=ImageTraining(TrainConfig(epochs=1, max_steps=5, lr=2e-3, patience=None)),
        ),
    }


@pytest.mark.parametrize("model_name", ["bert", "llama", "lenet-5"])
def test_every_preset_roundtrips_or_refuses_clearly(model_name, tasks, tmp_path):
    task = tasks[model_name]
    original = task.load_original(progress=False)
    inputs = task.example_inputs(2)
    refused: dict[str, str] = {}
    for preset in PRESETS.names():
        torch.manual_seed(0)
        try:
            model = mp.compress(original, preset, data=task, progress=False)
        except mp.ModelpressError as e:
            refused[preset] = str(e)
            continue
        path = mp.save(model, tmp_path / preset)
        loaded = mp.load(path)
        dtype = next(iter(loaded.state_dict().values())).dtype
        # a cast model takes its own dtype of float inputs (images); ids stay as they are
        x = {
            k: v.to(dtype) if v.is_floating_point() and dtype.is_floating_point else v
            for k, v in inputs.items()
        }
        with torch.no_grad():
            a, b = model(**x), loaded(**x)
        a = a if isinstance(a, torch.Tensor) else a.logits
        b = b if isinstance(b, torch.Tensor) else b.logits
        assert torch.equal(a, b), f"{model_name}/{preset}: loaded outputs differ"
        assert mp.recipe_of(loaded) == mp.recipe_of(model)
    wrongly = {p: refused[p] for p in MUST_WORK[model_name] & set(refused)}
    assert not wrongly, wrongly
    for preset, msg in refused.items():
        assert msg and "\n" not in msg.strip(), f"{preset}: unclear refusal {msg!r}"
