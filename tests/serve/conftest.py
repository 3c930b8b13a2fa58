"""Fixtures shared by the serving tests: a tiny text classifier artifact, saved once per module."""

import pytest
import torch

import modelpress as mp


@pytest.fixture(scope="module")
def cls_artifact(tmp_path_factory, bert_config, minilm_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = bert_config.__class__(**bert_config.to_dict())
    cfg.id2label, cfg.label2id = {0: "rotten", 1: "fresh"}, {"rotten": 0, "fresh": 1}
    base = BertForSequenceClassification(cfg).eval()
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    return mp.save(
        mp.compress(base, "int8-dynamic"),
        tmp_path_factory.mktemp("replicas") / "cls",
        extras={"tokenizer": lambda d: tok.save_pretrained(str(d))},
    )
