import math

import pytest
import torch

from modelpress.data import political_speeches
from modelpress.errors import ConfigError, DataError
from modelpress.models.builtin import resolve_model
from modelpress.models.causal_lm import CausalLMTask
from modelpress.models.classification import ClassifierTraining, TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.training import TrainConfig


def test_classification_adapter_on_tiny_model(tiny_bert_dir, small_splits):
    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits)
    model = task.load_original()
    ev = task.evaluate(model, progress=False)
    assert ev.metric == "accuracy" and 0.0 <= ev.value <= 1.0
    assert ev.predictions.shape == (len(small_splits.test),)
    labels = torch.tensor(small_splits.test.labels)
    assert ev.value == pytest.approx((ev.predictions == labels).float().mean().item())
    again = task.evaluate(model, reference=ev.predictions, progress=False)
    assert again.agreement == 1.0
    x1, x32 = task.example_inputs(1), task.example_inputs(32)
    assert x1["input_ids"].shape == (1, 64) and x32["input_ids"].shape == (32, 64)
    seen = torch.cat([b["index"] for b in task.batches("train", 16, shuffle_seed=3)])
    assert sorted(seen.tolist()) == list(range(len(small_splits.train)))
    assert torch.isfinite(task.loss(model, next(iter(task.batches("train", 8)))))


def test_classifier_is_trained_once_and_cached(tmp_path, bert_config, minilm_dir, small_splits, monkeypatch):
    from transformers import AutoTokenizer, BertModel

    d = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(bert_config).save_pretrained(str(d))  # no classification head: must be trained
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(d))
    training = ClassifierTraining(train=TrainConfig(epochs=1, lr=1e-3, patience=None), batch_size=16)
    task = TextClassificationTask(local_source(str(d)), small_splits, training=training)
    calls = []
    original = task._train_original
    monkeypatch.setattr(
        task, "_train_original", lambda out, progress: (calls.append(1), original(out, progress=False))
    )
    m1 = task.load_original(progress=False)
    m2 = task.load_original(progress=False)
    assert calls == [1]
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True)
    )
    # a changed split is a different cache key: trains again
    other = type(small_splits)(small_splits.validation, small_splits.train, small_splits.test, "swapped", 0)
    task2 = TextClassificationTask(local_source(str(d)), other, training=training)
    monkeypatch.setattr(
        task2, "_train_original", lambda out, progress: (calls.append(2), original(out, progress=False))
    )
    task2.load_original(progress=False)
    assert calls == [1, 2]


def test_causal_lm_adapter_on_tiny_model(tiny_llama_dir):
    task = CausalLMTask(local_source(str(tiny_llama_dir)), political_speeches(), eval_tokens=512, window=128)
    model = task.load_original()
    ev = task.evaluate(model, progress=False)
    assert ev.metric == "perplexity" and math.isfinite(ev.value) and ev.value > 1
    assert ev.predictions.shape == (4, 127)
    assert task.evaluate(model, reference=ev.predictions, progress=False).agreement == 1.0
    assert task.example_inputs(2)["input_ids"].shape == (2, 128)
    assert not task.higher_is_better


def test_causal_lm_needs_enough_text(tiny_llama_dir):
    task = CausalLMTask(local_source(str(tiny_llama_dir)), "too short", eval_tokens=512)
    with pytest.raises(DataError, match="too little text"):
        task.evaluate(task.load_original(), progress=False)


def test_resolve_model(tiny_bert_dir, tiny_llama_dir, tmp_path):
    assert isinstance(resolve_model(str(tiny_bert_dir)), TextClassificationTask)
    assert isinstance(resolve_model(str(tiny_llama_dir)), CausalLMTask)
    assert resolve_model("minilm").model_name == "all-MiniLM-L6-v2"
    assert resolve_model("smollm2").task == "causal-lm"
    with pytest.raises(DataError, match="model directory not found"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"config\.json is missing"):
        resolve_model(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown task 'translation'"):
        resolve_model("minilm", task="translation")
    with pytest.raises(ConfigError, match="runs the text-classification task"):
        resolve_model("minilm", task="causal-lm")
    with pytest.raises(DataError, match=r"data file not found: x\.csv"):  # built-ins take --data now
        resolve_model("smollm2", data="x.csv")
    assert resolve_model("someorg/somemodel", task="causal-lm").source.path == "someorg/somemodel"


def test_small_text_data_trains_the_original_longer_and_the_report_says_how(
    tmp_path, bert_config, minilm_dir, small_splits
):
    from transformers import AutoTokenizer, BertModel

    from modelpress.bench.report import write_reports
    from modelpress.bench.runner import BenchOptions, run_bench
    from modelpress.data.datasets import rotten_tomatoes
    from modelpress.recipe import resolve_methods
    from modelpress.training.loop import DataSizedSchedule

    d = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(bert_config).save_pretrained(str(d))  # no classification head: must be trained
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(d))
    src = local_source(str(d))
    # the defaults: Rotten Tomatoes (299 steps an epoch) trains as it always did; 160 examples longer
    assert TextClassificationTask(src, rotten_tomatoes(seed=0)).train_plan()[1] is None
    cfg, why = TextClassificationTask(src, small_splits).train_plan()
    assert (cfg.epochs, cfg.min_steps) == (52, 128) and "small (5 steps an epoch)" in why
    training = ClassifierTraining(
        train=TrainConfig(epochs=1, lr=1e-3, patience=None),
        batch_size=16,
        schedule=DataSizedSchedule(target_steps=30),
    )
    task = TextClassificationTask(src, small_splits, training=training, seq_len=16)
    opts = BenchOptions(tmp_path / "out", progress=False, measure_memory=False, rounds=1)
    result = run_bench(task, resolve_methods("fp32"), opts)
    note = result["env"]["original_training"]
    assert note.startswith("trained by modelpress on the train split: ") and "planned for 3 epochs" in note
    md = write_reports(result, tmp_path / "out")["md"].read_text()
    assert "- Original: trained by modelpress" in md and "validation accuracy by epoch" in md
