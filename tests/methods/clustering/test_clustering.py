import pytest
import torch
from torch import nn

import modelpress as mp
from modelpress.formats import Codebook
from modelpress.methods.clustering import CentroidFineTuneConfig, KMeansConfig, cluster_weight
from modelpress.models.classification import TextClassificationTask
from modelpress.models.sources import local_source
from modelpress.nn import DecodedEmbedding, DecodedLinear

CLUSTER_PRESETS = ["cluster-8bit", "cluster-4bit", "cluster-3bit", "cluster-4bit+int8cb"]


def _sqnr(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float(20 * torch.log10(w.norm() / (w - w_hat).norm()))


@pytest.mark.parametrize(
    ("bits", "floor_db"), [(8, 40.0), (5, 24.0), (4, 18.0), (3, 12.5), (2, 7.5), (1, 4.0)]
)
def test_sqnr_floors_per_bit_width(bits, floor_db):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(0)) * 0.05
    f = cluster_weight(w, KMeansConfig(bits=bits, granularity="tensor"))
    assert _sqnr(w, f.decode()) > floor_db


def test_finer_granularity_and_importance_help():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 256, generator=g) * torch.rand(32, 1, generator=g) * 3  # rows of different scale
    err = {
        gran: float(
            (w - cluster_weight(w, KMeansConfig(bits=3, granularity=gran, group_size=64)).decode()).norm()
        )
        for gran in ("tensor", "channel", "group", "group-scaled")
    }
    assert err["channel"] < err["tensor"] and err["group"] < err["channel"]
    imp = torch.rand(32, 256, generator=g) ** 4
    plain = cluster_weight(w, KMeansConfig(bits=3)).decode()
    weighted = cluster_weight(w, KMeansConfig(bits=3), importance=imp).decode()
    assert ((w - weighted) ** 2 * imp).sum() < ((w - plain) ** 2 * imp).sum()


def test_group_scaled_without_group_size_scales_each_row():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(20, 30, generator=g) * torch.rand(20, 1, generator=g) * 3  # 30: no usual group size
    f = cluster_weight(w, KMeansConfig(bits=4, granularity="group-scaled"))
    assert f.group_size == 30 and f.scale is not None and f.scale.numel() == 20
    same = cluster_weight(w, KMeansConfig(bits=4, granularity="group-scaled", group_size=30))
    assert torch.equal(f.decode(), same.decode())
    assert (w - f.decode()).norm() < (w - cluster_weight(w, KMeansConfig(bits=4)).decode()).norm()


def test_exact_mode_not_worse_than_lloyd():
    w = torch.randn(4, 300, generator=torch.Generator().manual_seed(2))
    lloyd = cluster_weight(w, KMeansConfig(bits=3, granularity="channel"))
    exact = cluster_weight(w, KMeansConfig(bits=3, granularity="channel", exact=True))
    assert (w - exact.decode()).norm() <= (w - lloyd.decode()).norm() + 1e-6


def test_sparsity_is_preserved_exactly():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    w[w.abs() < 0.8] = 0.0  # ~58 % zeros
    f = cluster_weight(w, KMeansConfig(bits=4, granularity="channel"))
    d = f.decode()
    assert f.mask is not None and torch.equal(d == 0, w == 0)
    ignored = cluster_weight(w, KMeansConfig(bits=4, sparsity="ignore"))
    assert ignored.mask is None
    few = torch.randn(16, 128, generator=torch.Generator().manual_seed(4))
    few[0, :20] = 0.0  # 1 % zeros: a mask would cost more than it saves
    assert cluster_weight(few, KMeansConfig(bits=4)).mask is None
    kept = cluster_weight(few, KMeansConfig(bits=4, sparsity="keep"))
    assert kept.mask is not None and torch.equal(kept.decode() == 0, few == 0)


@pytest.mark.parametrize("preset", CLUSTER_PRESETS)
def test_presets_save_load_equal(tmp_path, tiny_bert, preset):
    model = mp.compress(tiny_bert, preset)
    left = [m for m in model.modules() if type(m) in (nn.Linear, nn.Embedding)]
    assert all(m.weight.numel() < 256 for m in left)  # only layers too small for 8-bit codebooks stay
    path = mp.save(model, tmp_path / preset)
    loaded = mp.load(path)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert mp.artifact_bytes(path) == sum(f.stat().st_size for f in path.iterdir())


def test_cluster_4bit_artifact_is_small(tmp_path, tiny_llama):
    fp32 = mp.artifact_bytes(mp.save(tiny_llama, tmp_path / "fp32"))
    c4 = mp.compress(tiny_llama, "cluster-4bit")
    assert c4.lm_head.weight is c4.model.embed_tokens.weight  # tied: one codebook
    assert mp.artifact_bytes(mp.save(c4, tmp_path / "c4")) < fp32 / 6


def test_entropy_coded_artifact(tmp_path, tiny_bert):
    packed = mp.compress(tiny_bert, KMeansConfig(bits=4))
    auto = mp.compress(tiny_bert, KMeansConfig(bits=4, coding="auto"))
    a, b = mp.save(packed, tmp_path / "p"), mp.save(auto, tmp_path / "a")
    assert mp.artifact_bytes(b) <= mp.artifact_bytes(a) + 2048  # manifest grows a little
    loaded = mp.load(b)
    x = torch.randint(0, 1000, (1, 5))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).logits, auto(input_ids=x).logits)


@pytest.fixture
def tiny_task(tiny_bert_dir, small_splits):
    return TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)


def test_centroid_finetune_trains_codebooks_only_codes_fixed(tiny_task):
    original = tiny_task.load_original()
    clustered = mp.compress(original, KMeansConfig(bits=3, codebook_dtype="int8"))
    books = {n: m for n, m in clustered.named_modules() if isinstance(m, Codebook)}
    before = {n: (b.code_values().clone(), b.float_codebook().clone()) for n, b in books.items()}
    tuned = mp.compress(
        clustered, CentroidFineTuneConfig(max_steps=3, lr=1e-2), data=tiny_task, progress=False
    )
    after = {n: m for n, m in tuned.named_modules() if isinstance(m, Codebook)}
    assert all(torch.equal(after[n].code_values(), before[n][0]) for n in books)
    assert any(not torch.equal(after[n].float_codebook(), before[n][1]) for n in books)
    assert all(after[n].codebook.dtype == torch.int8 for n in books)  # back to the stored dtype
    assert [c.name for c in mp.recipe_of(tuned)] == ["kmeans", "finetune-centroids"]


def test_fisher_importance_needs_data(tiny_task, tiny_bert):
    cfg = KMeansConfig(bits=3, importance="fisher", importance_batches=2)
    model = mp.compress(tiny_task.load_original(), cfg, data=tiny_task, progress=False)
    assert isinstance(model.classifier, DecodedLinear)
    with pytest.raises(mp.ConfigError, match="needs training data"):
        mp.compress(tiny_bert, cfg)
    with pytest.raises(mp.ConfigError, match="no codebook"):
        mp.compress(tiny_bert, CentroidFineTuneConfig(), data=tiny_task)


def test_embedding_decodes_only_looked_up_rows(tiny_bert):
    m = mp.compress(tiny_bert, KMeansConfig(bits=4, granularity="channel", layers=("embedding",)))
    emb = m.bert.embeddings.word_embeddings
    assert isinstance(emb, DecodedEmbedding)
    ids = torch.tensor([[5, 9, 5]])
    torch.testing.assert_close(emb(ids), emb.weight.decode()[ids])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, r"kmeans: bits must be an integer in \[1, 8\], got 0"),
        ({"bits": 9}, r"bits must be an integer in \[1, 8\], got 9"),
        ({"bits": 4.0}, "bits must be an integer, got 4.0"),
        ({"granularity": "row"}, "granularity must be one of tensor, channel, group, group-scaled"),
        ({"granularity": "group"}, "needs a group_size"),
        ({"granularity": "group", "group_size": 8, "bits": 4}, "cannot fill 16 clusters"),
        ({"granularity": "group", "group_size": 0}, "group_size must be a positive integer"),
        ({"init": "random"}, "init must be one of linear"),
        ({"codebook_dtype": "int4"}, "codebook_dtype"),
        ({"codebook_dtype": "int8", "granularity": "group-scaled", "group_size": 64}, "scaled per group"),
        ({"coding": "huffman"}, "coding must be"),
        ({"sparsity": "drop"}, "sparsity must be"),
        ({"layers": ("attention",)}, "layers must be"),
        ({"include": 3}, "include must be a list of strings"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(mp.ConfigError, match=message):
        KMeansConfig(**kwargs)


def test_more_clusters_than_weights(tiny_bert, caplog):
    m = mp.compress(tiny_bert, KMeansConfig(bits=8))  # token-type embeddings (2 x 32) are too small
    assert isinstance(m.bert.embeddings.token_type_embeddings, nn.Embedding)
    assert "token_type_embeddings left uncompressed" in caplog.text
    notes = mp.compression_notes(m)  # also handed to the caller
    assert any("bert.embeddings.token_type_embeddings left uncompressed" in n for n in notes)
    with pytest.raises(mp.ConfigError, match="every matched layer has fewer weights"):
        mp.compress(tiny_bert, KMeansConfig(bits=8, include=("*token_type*",)))
    with pytest.raises(mp.ConfigError, match="fewer than k = 16"):
        cluster_weight(torch.randn(2, 4), KMeansConfig(bits=4, granularity="channel"), name="tiny")
    with pytest.raises(mp.ConfigError, match="NaN"):
        cluster_weight(torch.tensor([[float("nan"), 1.0]]), KMeansConfig(bits=1))


def test_product_quantization(tmp_path, tiny_bert):
    from modelpress.formats import ProductQuantized
    from modelpress.methods.clustering import ProductQuantConfig
    from modelpress.primitives.kmeans import fit_kmeans_vectors

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 4, generator=g)
    c, codes, total = fit_kmeans_vectors(x, 64)
    assert total == pytest.approx(float(((x - c[codes]) ** 2).sum()), rel=1e-4)
    # Lloyd improves on its own k-means++ seeding
    *_, total0 = fit_kmeans_vectors(x, 64, max_iter=0)
    assert total <= total0
    model = mp.compress(tiny_bert, ProductQuantConfig(bits=6, dim=4))
    fmt = model.bert.encoder.layer[0].intermediate.dense.weight
    assert isinstance(fmt, ProductQuantized) and fmt.codebook.shape == (64, 4)
    assert torch.equal(fmt.decode(), fmt.codebook[fmt.codes.long()].reshape(fmt.shape))
    path = mp.save(model, tmp_path / "pq")
    assert mp.load(path).bert.encoder.layer[0].intermediate.dense.weight.to_storage()["codes"].numel() == (
        64 * 32 // 4 * 6 // 8
    )
    ids = torch.randint(0, 1000, (2, 5))
    with torch.no_grad():
        assert torch.equal(mp.load(path)(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(mp.ConfigError, match="dim"):
        ProductQuantConfig(dim=1)
    with pytest.raises(mp.ConfigError, match="no layer fits"):
        mp.compress(tiny_bert, ProductQuantConfig(dim=3, include="*token_type*"))
