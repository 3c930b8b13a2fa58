"""A user's own nn.Module and DataLoader through compress / save / load (issue 19, items 3-4):
no task adapter, no registered architecture; the loaded artifact computes exactly what the
compressed model in memory computes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modelpress as mp
from modelpress.errors import DataError
from modelpress.formats.sparse import SparseTensor
from modelpress.methods.distillation.distill import DistillConfig
from modelpress.methods.structured.channels import PruneChannelsConfig
from user_models import PReLUNet, TinyEncoder, accuracy_on, image_data, image_loader, token_loader


@pytest.fixture
def net() -> PReLUNet:
    torch.manual_seed(0)
    return PReLUNet().eval()


@pytest.fixture
def encoder() -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder().eval()


def _roundtrip(model: nn.Module, path, fresh: nn.Module, x: torch.Tensor) -> nn.Module:
    mp.save(model, path)
    loaded = mp.load(path, model=fresh)
    assert loaded is fresh
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return loaded


@pytest.mark.parametrize(
    "method", ["int8-dynamic", "int4-g128", "cluster-4bit", PruneChannelsConfig(fraction=0.5)], ids=str
)
def test_plain_cnn_compresses_saves_and_loads_into_a_fresh_instance(tmp_path, net, method):
    x, _ = image_data(8)
    small = mp.compress(net, method, progress=False)
    _roundtrip(small, tmp_path / "a", PReLUNet(), x)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["base"] == {"library": "user", "class": "user_models.PReLUNet"}
    assert mp.artifact_bytes(tmp_path / "a") < 0.8 * sum(p.numel() * 4 for p in net.parameters())
    if isinstance(method, PruneChannelsConfig):
        # the filters went with their PReLU slopes and the next layer's inputs
        modules = manifest["structure"]["modules"]
        assert modules["prelu1"] == {"class": "PReLU", "args": {"num_parameters": 4, "init": 0.25}}
        assert modules["conv2"]["args"]["in_channels"] == 4 and modules["conv2"]["args"]["out_channels"] == 8
        assert modules["fc1"]["args"]["in_features"] == 8 * 9
    assert not any(p.device.type == "meta" for p in net.parameters())  # the input is untouched


def test_channel_pruning_then_int8_saves_its_structure(tmp_path, net):
    x, _ = image_data(8)
    pruned = mp.compress(net, PruneChannelsConfig(fraction=0.5), progress=False)
    both = mp.compress(pruned, "int8-dynamic", progress=False)
    loaded = _roundtrip(both, tmp_path / "a", PReLUNet(), x)
    assert loaded.prelu2.weight.shape == (8,) and [c.name for c in mp.recipe_of(loaded)] == [
        "prune-channels",
        "int8-dynamic",
    ]


def test_uncompressed_module_saves_and_loads(tmp_path, net):
    x, _ = image_data(4)
    _roundtrip(net, tmp_path / "a", PReLUNet(), x)


def test_load_without_model_says_to_pass_one(tmp_path, net):
    mp.save(mp.compress(net, "int8-dynamic", progress=False), tmp_path / "a")
    with pytest.raises(
        mp.ArtifactError, match=r"user_models\.PReLUNet.*load\(path, model=PReLUNet\(\.\.\.\)\)"
    ):
        mp.load(tmp_path / "a")


def test_load_refuses_a_model_that_does_not_fit(tmp_path, net):
    small = mp.compress(net, "int8-dynamic", progress=False)
    mp.save(small, tmp_path / "a")
    other = PReLUNet(width=4)
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(mp.ArtifactError, match=r"'fc1.weight' the shape \[32, 144\].*builds \[32, 72\]"):
        mp.load(tmp_path / "a", model=other)
    assert {k: torch.equal(v, state[k]) for k, v in other.state_dict().items()} == dict.fromkeys(state, True)
    assert not any(isinstance(m, mp.api.CompressedModule) for m in other.modules())  # checked before touched
    with pytest.raises(mp.ConfigError, match="fresh, uncompressed instance"):
        mp.load(tmp_path / "a", model=small)
    with pytest.raises(mp.ConfigError, match=r"fresh nn\.Module instance"):
        mp.load(tmp_path / "a", model="PReLUNet")  # type: ignore[arg-type]


def test_gptq_calibrates_on_a_plain_dataloader(tmp_path, net):
    loader = image_loader(labels=False)  # batches are [x]: the forward alone, no loss needed
    small = mp.compress(net, "gptq-4bit", data=loader, progress=False)
    assert [c.name for c in mp.recipe_of(small)] == ["gptq"]
    x, _ = image_data(8)
    _roundtrip(small, tmp_path / "a", PReLUNet(), x)


def test_prune_fine_tunes_with_the_users_loss(tmp_path, net):
    loader = image_loader(labels=False)
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        (x,) = batch
        return model(x).pow(2).mean()

    with pytest.raises(mp.ConfigError, match=r"prune needs a loss on your batches.*loss_fn="):
        mp.compress(net, "prune-50", data=loader, progress=False)
    small = mp.compress(net, "prune-50", data=loader, loss_fn=loss_fn, progress=False)
    assert len(calls) == len(loader)  # one epoch, one step per batch
    assert any("no eval_fn given" in n for n in mp.compression_notes(small))
    x, _ = image_data(8)
    _roundtrip(small, tmp_path / "a", PReLUNet(), x)


def test_fine_tuning_keeps_the_best_epoch_by_eval_fn(net, monkeypatch):
    # the test compares epochs, not kernels: a re-quantizing kernel chosen for the final
    # model (on AVX2, fbgemm's 7-bit activations) may flip one of the 64 images
    monkeypatch.setenv("MODELPRESS_KERNELS", "linear=reference,conv=reference")
    loader = image_loader()
    scores = []

    def eval_fn(model):
        scores.append(accuracy_on(loader)(model))
        return scores[-1]

    small = mp.compress(net, "cluster-4bit-ft", data=loader, eval_fn=eval_fn, progress=False)
    assert scores and not mp.compression_notes(small)
    assert accuracy_on(loader)(small) == max(scores)


def test_distillation_into_a_users_student(tmp_path, net):
    loader = image_loader()
    torch.manual_seed(1)
    student = PReLUNet(width=4)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trained = mp.compress(
        student, DistillConfig(student="input", epochs=1, lr=1e-2), data=loader, teacher=net, progress=False
    )
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    x, _ = image_data(8)
    _roundtrip(trained, tmp_path / "a", PReLUNet(width=4), x)


def test_small_transformer_modules_take_a_plain_dataloader(tmp_path, tiny_bert):
    torch.manual_seed(0)
    enc = TinyEncoder().eval()
    loader = token_loader()
    small = mp.compress(enc, "gptq-4bit", data=loader, progress=False)
    # torch's encoder layers read their attention / FFN weights directly: those stay Linears
    assert type(small.encoder.layers[0].linear1) is nn.Linear and type(small.head) is not nn.Linear
    ids = next(iter(loader))[0]
    _roundtrip(small, tmp_path / "enc", TinyEncoder(), ids)
    small = mp.compress(enc, "prune-50", data=loader, progress=False)  # default cross-entropy on (ids, y)
    _roundtrip(small, tmp_path / "enc-pruned", TinyEncoder(), ids)
    # a transformers model with a loader of dict batches (labels dropped from the forward)
    batches = [
        {
            "input_ids": torch.randint(1, 1000, (2, 8)),
            "attention_mask": torch.ones(2, 8, dtype=torch.long),
            "labels": torch.tensor([0, 1]),
        }
        for _ in range(2)
    ]
    bert = mp.compress(tiny_bert, "gptq-4bit", data=batches, progress=False)
    mp.save(bert, tmp_path / "bert")
    inputs = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad():
        want = bert(**inputs).logits
        assert torch.equal(mp.load(tmp_path / "bert")(**inputs).logits, want)
        # model= works for a transformers artifact too: the instance stands for the base
        fresh = type(tiny_bert)(tiny_bert.config)
        assert torch.equal(mp.load(tmp_path / "bert", model=fresh)(**inputs).logits, want)


def test_prune_fine_tunes_a_small_transformer_with_the_users_loss(tmp_path, encoder):
    loader = token_loader()
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        ids, y = batch
        return nn.functional.cross_entropy(model(ids), y)

    small = mp.compress(encoder, "prune-50", data=loader, loss_fn=loss_fn, progress=False)
    assert len(calls) == len(loader)  # one epoch, one step per batch
    loaded = _roundtrip(small, tmp_path / "a", TinyEncoder(), next(iter(loader))[0])
    # prune-50 takes Linears and embeddings; torch's encoder layers read their Linears' weights
    # directly and the head is the output layer, so the embedding is what it prunes
    for model in (small, loaded):
        weight = model.embed.weight
        assert isinstance(weight, SparseTensor) and weight.n_values == weight.numel() // 2
        assert (weight.decode() == 0).sum() >= weight.numel() // 2
        assert weight.stored_nbytes() < 0.6 * weight.numel() * 4  # float32 dense
    assert type(small.encoder.layers[0].linear1) is nn.Linear


def test_distillation_into_a_users_small_transformer(tmp_path, encoder):
    loader = token_loader()

    def gap_to_teacher(model: nn.Module) -> float:  # KL(teacher || model) over the data
        with torch.no_grad():
            return sum(
                nn.functional.kl_div(
                    model(ids).log_softmax(-1),
                    encoder(ids).log_softmax(-1),
                    reduction="batchmean",
                    log_target=True,
                ).item()
                for ids, _ in loader
            )

    torch.manual_seed(1)
    student = TinyEncoder(dim=16)
    before = gap_to_teacher(student)
    config = DistillConfig(student="input", alpha=1.0, epochs=1, lr=1e-2)  # soft targets only
    trained = mp.compress(student, config, data=loader, teacher=encoder, progress=False)
    assert gap_to_teacher(trained) < 0.75 * before
    assert gap_to_teacher(student) == before  # the input is untouched
    _roundtrip(trained, tmp_path / "a", TinyEncoder(dim=16), next(iter(loader))[0])


def test_bad_data_gets_one_clear_error(net):
    with pytest.raises(mp.ConfigError, match="gptq: data= yielded no batches"):
        mp.compress(
            net, "gptq-4bit", data=DataLoader(TensorDataset(torch.zeros(0, 3, 12, 12))), progress=False
        )
    with pytest.raises(mp.ConfigError, match="one-shot iterator"):
        mp.compress(net, "gptq-4bit", data=(b for b in image_loader()), progress=False)
    with pytest.raises(mp.ConfigError, match="data must be an iterable of batches"):
        mp.compress(net, "gptq-4bit", data=42, progress=False)
    with pytest.raises(mp.ConfigError, match="data must be an iterable of batches"):
        mp.compress(net, "gptq-4bit", data=torch.zeros(4, 3, 12, 12), progress=False)
    with pytest.raises(mp.ConfigError, match="loss_fn go with data="):
        mp.compress(net, "int8-dynamic", loss_fn=lambda m, b: m(b).sum(), progress=False)
    with pytest.raises(mp.ConfigError, match="forward_fn must be a function"):
        mp.compress(net, "gptq-4bit", data=image_loader(), forward_fn=3, progress=False)  # type: ignore[arg-type]
    with pytest.raises(
        DataError,
        match=r"gptq: the default forward \(model\(\*inputs\)\) failed on a batch of "
        r"list\(list\(tensor\[2, 3\]\)\).*pass forward_fn=",
    ):
        mp.compress(net, "gptq-4bit", data=[[[torch.zeros(2, 3)]]], progress=False)
    with pytest.raises(DataError, match="cannot feed a batch of type a str"):
        mp.compress(net, "gptq-4bit", data=["not a batch"], progress=False)
    with pytest.raises(DataError, match="loss_fn must return a scalar tensor"):
        mp.compress(net, "prune-50", data=image_loader(), loss_fn=lambda m, b: m(b[0]), progress=False)
    with pytest.raises(DataError, match="eval_fn must return a finite number"):
        mp.compress(
            net, "cluster-4bit-ft", data=image_loader(), eval_fn=lambda m: float("nan"), progress=False
        )
    with pytest.raises(mp.ConfigError, match=r"teacher must be a torch nn\.Module"):
        mp.compress(net, "int8-dynamic", teacher="big", progress=False)  # type: ignore[arg-type]


def test_a_module_a_method_cannot_handle_gets_one_clear_error():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.head = nn.Linear(3 * 144, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(x + self.conv(x), 1))

    with pytest.raises(mp.ConfigError, match="prune-channels cannot prune 'conv'"):
        mp.compress(Residual(), PruneChannelsConfig(fraction=0.5), progress=False)
    with pytest.raises(mp.ConfigError, match=r"distill \(student: layer-drop\) needs a transformers model"):
        mp.compress(Residual(), "distill-3l", data=image_loader(), progress=False)
