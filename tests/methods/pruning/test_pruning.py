import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.formats import SparseTensor
from modelpress.methods.base import PRESETS
from modelpress.methods.clustering import KMeansConfig
from modelpress.methods.pruning import PruneConfig, SparseStorageConfig
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedLinear
from modelpress.recipe import Recipe

PRUNE_PRESETS = ["prune-50", "prune-global-70", "prune-2:4", "prune-wanda-50", "prune-gradual-80"]


def _linears(model):
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear and n != "classifier"}


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


def test_local_exact_count_per_layer_head_and_embeddings_kept(tiny_bert):
    m = mp.compress(tiny_bert, PruneConfig(sparsity=0.7, storage="dense"))
    for n, lin in _linears(m).items():
        w0 = tiny_bert.get_submodule(n).weight
        assert int((lin.weight == 0).sum()) == w0.numel() - round(0.3 * w0.numel()), n
        kept = lin.weight != 0
        assert w0.abs()[kept].min() >= w0.abs()[~kept].max()  # the largest magnitudes stay
    assert torch.equal(m.classifier.weight, tiny_bert.classifier.weight)  # the output layer
    assert torch.equal(
        m.bert.embeddings.word_embeddings.weight, tiny_bert.bert.embeddings.word_embeddings.weight
    )


def test_global_exact_overall_count(tiny_bert):
    m = mp.compress(tiny_bert, PruneConfig(sparsity=0.6, scope="global", storage="dense"))
    ws = [lin.weight for lin in _linears(m).values()]
    total = sum(w.numel() for w in ws)
    assert sum(int((w != 0).sum()) for w in ws) == round(0.4 * total)
    per_layer = {float((w == 0).float().mean()) for w in ws}
    assert len(per_layer) > 1  # one threshold, different layer sparsities


@pytest.mark.parametrize(("pattern", "m"), [("2:4", 4), ("4:8", 8)])
def test_nm_pattern_in_every_group(tiny_bert, pattern, m):
    model = mp.compress(tiny_bert, PruneConfig(sparsity=0.5, pattern=pattern, storage="dense"))
    for lin in _linears(model).values():
        assert ((lin.weight.reshape(-1, m) != 0).sum(1) == m // 2).all()


def test_layer_sparsity_and_head():
    torch.manual_seed(0)
    from modelpress.models.lenet import LeNet300100

    net = LeNet300100()
    cfg = PruneConfig(sparsity=0.9, layer_sparsity=("fc2=0.5", "@head=0.2"), head=True, storage="dense")
    m = mp.compress(net, cfg)
    dens = {n: float((getattr(m, n).weight != 0).float().mean()) for n in ("fc1", "fc2", "fc3")}
    assert dens == pytest.approx({"fc1": 0.1, "fc2": 0.5, "fc3": 0.8})


def test_sparse_storage_save_load_equal_and_small(tmp_path, tiny_bert):
    model = mp.compress(tiny_bert, PruneConfig(sparsity=0.5, layers=("linear", "embedding")))
    dense_layer = model.bert.encoder.layer[0].intermediate.dense
    assert isinstance(dense_layer, DecodedLinear) and isinstance(dense_layer.weight, SparseTensor)
    path = mp.save(model, tmp_path / "p50")
    loaded = mp.load(path)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    for (n, a), (_, b) in zip(model.named_modules(), loaded.named_modules(), strict=True):
        if isinstance(a, SparseTensor):
            assert torch.equal(a.decode(), b.decode()), n
    fp32 = mp.artifact_bytes(mp.save(tiny_bert, tmp_path / "fp32"))
    assert mp.artifact_bytes(path) < 0.6 * fp32


def test_masks_survive_finetuning(tiny_task):
    original = tiny_task.load_original()
    one_shot = mp.compress(original, PruneConfig(sparsity=0.5, storage="dense"))
    tuned = mp.compress(
        original,
        PruneConfig(sparsity=0.5, epochs=1, max_steps=3, lr=1e-2, storage="dense"),
        data=tiny_task,
        progress=False,
    )
    changed = False
    for n, lin in _linears(tuned).items():
        pruned = one_shot.get_submodule(n).weight == 0
        assert (lin.weight[pruned] == 0).all(), n  # exactly zero after AdamW with weight decay
        changed |= not torch.equal(lin.weight, one_shot.get_submodule(n).weight)
    assert changed
    assert [c.name for c in mp.recipe_of(tuned)] == ["prune"]


def test_gradual_cubic_reaches_exact_final_sparsity(tiny_task):
    cfg = PruneConfig(
        sparsity=0.8, schedule="cubic", epochs=1, max_steps=6, prune_events=3, lr=1e-3, storage="dense"
    )
    m = mp.compress(tiny_task.load_original(), cfg, data=tiny_task, progress=False)
    for lin in _linears(m).values():
        assert int((lin.weight != 0).sum()) == round(0.2 * lin.weight.numel())


@pytest.mark.parametrize("criterion", ["wanda", "taylor"])
def test_calibrated_criteria(tiny_task, criterion):
    m = mp.compress(
        tiny_task.load_original(),
        PruneConfig(sparsity=0.5, criterion=criterion, storage="dense"),
        data=tiny_task,
        progress=False,
    )
    for lin in _linears(m).values():
        w = lin.weight
        if criterion == "wanda":  # per output row
            assert ((w != 0).sum(1) == round(0.5 * w.shape[1])).all()
        else:
            assert int((w != 0).sum()) == round(0.5 * w.numel())
    with pytest.raises(mp.ConfigError, match="needs calibration data"):
        mp.compress(tiny_task.load_original(), PruneConfig(criterion=criterion))


def test_prune_then_kmeans_keeps_zeros(tmp_path, tiny_bert):
    recipe = [
        PruneConfig(sparsity=0.8, storage="dense"),
        KMeansConfig(bits=4, sparsity="keep", coding="zstd"),
    ]
    m = mp.compress(tiny_bert, recipe)
    fmt = m.bert.encoder.layer[1].output.dense.weight
    assert fmt.mask is not None and abs(float(fmt.mask.float().mean()) - 0.2) < 1e-3
    assert (fmt.decode().reshape(-1)[~fmt.mask.reshape(-1)] == 0).all()
    path = mp.save(m, tmp_path / "pk")
    ids = torch.randint(0, 1000, (1, 7))
    with torch.no_grad():
        assert torch.equal(mp.load(path)(input_ids=ids).logits, m(input_ids=ids).logits)


def test_sparse_storage_method(tiny_bert):
    dense = mp.compress(tiny_bert, PruneConfig(sparsity=0.9, storage="dense"))
    stored = mp.compress(dense, SparseStorageConfig())
    assert isinstance(stored.bert.encoder.layer[0].attention.self.query.weight, SparseTensor)
    assert isinstance(stored.classifier, nn.Linear)  # no zeros: stays dense
    untouched = mp.compress(tiny_bert, SparseStorageConfig())
    assert not any(isinstance(m, DecodedLinear) for m in untouched.modules())
    assert any("no selected layer has enough zeros" in n for n in mp.compression_notes(untouched))


@pytest.mark.parametrize("preset", [*PRUNE_PRESETS, "deep-compression", "deep-compression-fc"])
def test_presets_roundtrip_yaml(preset):
    recipe = Recipe(PRESETS.get(preset).build())
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert PRESETS.get(preset).family == "pruning"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, r"prune: sparsity must be a number in \[0, 1\), got 1.0"),
        ({"sparsity": -0.1}, r"sparsity must be a number in \[0, 1\)"),
        ({"sparsity": "half"}, "sparsity must be a number, got 'half'"),
        ({"criterion": "random"}, "criterion must be one of magnitude, wanda, taylor"),
        ({"pattern": "2:4", "sparsity": 0.7}, "set sparsity=0.5"),
        ({"pattern": "4:2"}, "0 < N < M"),
        ({"layer_sparsity": ("fc1",)}, "look like"),
        ({"layer_sparsity": ("fc1=1.2",)}, r"in \[0, 1\)"),
        ({"criterion": "wanda", "layers": ("conv",)}, "Linear layers only"),
        ({"schedule": "cubic"}, "epochs >= 1"),
        ({"storage": "csr"}, "storage must be"),
        ({"layers": ("attention",)}, "layers must be"),
        ({"layers": ()}, "layers must list some of"),
        ({"epochs": -1}, "epochs must be a non-negative integer"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"index": "csr"}, "index must be"),
        ({"ramp": 0.0}, "ramp must be"),
        ({"sparsity": 0.3, "initial_sparsity": 0.5, "schedule": "cubic", "epochs": 1}, "must not exceed"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(mp.ConfigError, match=message):
        PruneConfig(**kwargs)


def test_bad_inputs(tiny_bert, tiny_llama):
    with torch.no_grad():
        tiny_bert.bert.encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(mp.ConfigError, match="NaN"):
        mp.compress(tiny_bert, PruneConfig())
    # the LM head is tied to the token embeddings: pruning one would prune the other
    with pytest.raises(mp.ConfigError, match="tied"):
        mp.compress(tiny_llama, PruneConfig(layers=("linear", "embedding")))
    with pytest.raises(mp.ConfigError, match="tied"):
        mp.compress(tiny_llama, PruneConfig(head=True))
    with pytest.raises(mp.ConfigError, match="needs training data"):
        mp.compress(tiny_llama, PruneConfig(epochs=1))
    with pytest.raises(mp.ConfigError, match="include pattern 'nothing\\*' matches no module"):
        mp.compress(tiny_llama, PruneConfig(include=("nothing*",)))
    with pytest.raises(mp.ConfigError, match="no layer matched"):  # the output layer only
        mp.compress(tiny_llama, PruneConfig(include="lm_head"))
