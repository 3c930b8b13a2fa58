"""Shared fixtures: tiny random BERT and Llama models built from the packaged configs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from modelpress.data.datasets import TextDataset, TextSplits, rotten_tomatoes
from modelpress.models.sources import minilm_source, smollm2_source


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return Path(minilm_source().path)


@pytest.fixture(scope="session")
def bert_config(minilm_dir: Path):
    """MiniLM's packaged config.json with 2 small layers."""
    from transformers import BertConfig

    cfg = BertConfig.from_pretrained(str(minilm_dir))
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size = 2, 32, 2, 64
    cfg.num_labels = 2
    return cfg


@pytest.fixture(scope="session")
def llama_config():
    """SmolLM2's packaged (GGUF) config with 2 small layers; grouped-query attention and tied
    embeddings kept; vocabulary cut to MiniLM's tokenizer so tests can share it."""
    from transformers import LlamaConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

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
    return LlamaConfig(**raw)


@pytest.fixture
def tiny_bert(bert_config):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(bert_config).eval()


@pytest.fixture
def tiny_llama(llama_config):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config).eval()


def pytest_configure(config):
    """Kernel choices of the test run go to a fresh cache (not the user's): every run times
    the kernels of this machine again."""
    if "MODELPRESS_KERNEL_CACHE" not in os.environ:
        os.environ["MODELPRESS_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="modelpress-kernels-")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Unit tests write caches to a temp dir; slow tests use the real user cache (so the
    trained default model is reused between runs)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("MODELPRESS_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def small_splits() -> TextSplits:
    """A small slice of the Rotten Tomatoes splits (fast tests)."""
    full = rotten_tomatoes(seed=0)

    def cut(d: TextDataset, n: int) -> TextDataset:
        return d.subset(list(range(min(n, len(d)))))

    return TextSplits(cut(full.train, 160), cut(full.validation, 48), cut(full.test, 64), "rt-small", 0)


@pytest.fixture
def tiny_bert_dir(tmp_path, tiny_bert, minilm_dir) -> Path:
    """A local HF directory: tiny BERT with a (random) 2-label head + MiniLM's tokenizer."""
    from transformers import AutoTokenizer

    d = tmp_path / "tiny-bert"
    tiny_bert.config.id2label = {0: "rotten", 1: "fresh"}
    tiny_bert.config.label2id = {"rotten": 0, "fresh": 1}
    tiny_bert.save_pretrained(str(d))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(d))
    return d


@pytest.fixture
def tiny_llama_dir(tmp_path, tiny_llama, minilm_dir) -> Path:
    from transformers import AutoTokenizer

    d = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(str(d))
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(d))
    return d


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """Runs a test on the CPU, and again on CUDA when a GPU is present."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)
