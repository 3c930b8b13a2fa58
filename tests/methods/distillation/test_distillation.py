import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelpress as mp
from modelpress.errors import ConfigError
from modelpress.methods.base import PRESETS
from modelpress.methods.distillation import DistillConfig
from modelpress.methods.distillation.distill import _Objective, distill
from modelpress.methods.distillation.losses import (
    attention_loss,
    cosine_hidden_loss,
    hidden_mse_loss,
    kd_loss,
    mutual_losses,
    rkd_angle_loss,
    rkd_distance_loss,
    self_distillation_loss,
    soft_kl,
)
from modelpress.methods.distillation.students import layer_drop_student, narrow_student
from modelpress.models.classification import TextClassificationTask
from modelpress.models.lenet import LeNet300100
from modelpress.models.sources import local_source
from modelpress.recipe import Recipe

# -- losses against hand-computed values ----------------------------------------------------


def test_soft_kl_hand_value_and_t_squared():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (0.75, 0.25)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_kl(s, t, 1.0).item() == pytest.approx(want, rel=1e-6)
    # T = 2: p_t = softmax(ln3/2, 0) = (√3, 1)/(√3+1); the KL is multiplied by T² = 4
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    want2 = a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5)
    assert soft_kl(s, t, 2.0).item() == pytest.approx(4 * want2, rel=1e-6)


def test_t_squared_keeps_the_soft_gradient_scale():
    """Hinton et al.: with the T² factor the soft-target gradient is about the same at any
    high temperature (without it, it would shrink as 1/T²)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 5, generator=g)
    grads = []
    for temp in (10.0, 20.0):
        s = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        soft_kl(s, t, temp).backward()
        grads.append(s.grad.norm().item())
    assert grads[1] == pytest.approx(grads[0], rel=0.05)  # unscaled, the ratio would be 1/4


def test_kd_loss_mixes_soft_and_hard_terms():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    labels = torch.tensor([0])
    soft = soft_kl(s, t, 2.0).item()
    got = kd_loss(s, t, labels, temperature=2.0, alpha=0.25).item()
    assert got == pytest.approx(0.25 * soft + 0.75 * math.log(2.0), rel=1e-6)
    assert kd_loss(s, t, None, temperature=2.0, alpha=0.25).item() == pytest.approx(soft)  # unlabeled


def test_token_mask_selects_tokens():
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[math.log(3.0), 0.0], [50.0, -50.0], [math.log(3.0), 0.0]]])
    mask = torch.tensor([[True, False, True]])
    want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_kl(s, t, 1.0, mask).item() == pytest.approx(want, rel=1e-6)


def test_hidden_mse_with_projection_and_cosine():
    s = torch.tensor([[[1.0, 2.0]]])
    t = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    with pytest.raises(ValueError, match="projection"):
        hidden_mse_loss(s, t)
    proj = nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    # projected (1, 2, 1, 2) vs (1, 2, 3, 4): squared errors 0, 0, 4, 4 -> mean 2
    assert hidden_mse_loss(s, t, proj).item() == pytest.approx(2.0)
    a = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    b = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert cosine_hidden_loss(a, b).item() == pytest.approx(0.5)  # (1 - 0 + 1 - 1) / 2
    assert cosine_hidden_loss(a, b, torch.tensor([[False, True]])).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_loss_hand_value():
    t = torch.tensor([0.5, 0.5]).expand(1, 1, 2, 2)
    s = torch.tensor([0.25, 0.75]).expand(1, 1, 2, 2)
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert attention_loss(s, t).item() == pytest.approx(want, rel=1e-5)
    assert attention_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # different head counts: compared after averaging over heads
    s2 = torch.cat([s, s], 1)
    assert attention_loss(s2, t).item() == pytest.approx(want, rel=1e-5)


def _rkd_reference(s, t):
    """Park et al. 2019 written with loops: distances normalised by their mean over pairs,
    angles cos∠(e_j - e_i, e_k - e_i) over all triplets, Huber (smooth L1) losses."""
    n = len(s)

    def dist(e):
        d = [[(e[i] - e[j]).norm().item() for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [d[i][j] / mu for i in range(n) for j in range(n) if i != j]

    def huber(a, b):
        out = []
        for x, y in zip(a, b, strict=True):
            r = abs(x - y)
            out.append(0.5 * r * r if r < 1 else r - 0.5)
        return sum(out) / len(out)

    def angles(e):
        out = []
        for i, j, k in itertools.product(range(n), repeat=3):
            u, v = e[j] - e[i], e[k] - e[i]
            nu, nv = u.norm().item(), v.norm().item()
            out.append(0.0 if nu == 0 or nv == 0 else (u @ v).item() / (nu * nv))
        return out

    return huber(dist(s), dist(t)), huber(angles(s), angles(t))


def test_relational_losses_match_reference():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 7, generator=g)  # widths may differ
    want_d, want_a = _rkd_reference(s, t)
    assert rkd_distance_loss(s, t).item() == pytest.approx(want_d, rel=1e-5)
    assert rkd_angle_loss(s, t).item() == pytest.approx(want_a, rel=1e-5)
    assert rkd_distance_loss(2 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # scale-free


def test_self_distillation_and_mutual():
    g = torch.Generator().manual_seed(0)
    final, e1, e2 = (torch.randn(4, 3, generator=g) for _ in range(3))
    want = (soft_kl(e1, final, 2.0) + soft_kl(e2, final, 2.0)) / 2
    assert self_distillation_loss([e1, e2], final, 2.0).item() == pytest.approx(want.item())
    labels = torch.tensor([0, 1, 2, 0])
    la, lb = mutual_losses(e1, e2, labels)
    assert la.item() == pytest.approx((F.cross_entropy(e1, labels) + soft_kl(e1, e2)).item())
    assert lb.item() == pytest.approx((F.cross_entropy(e2, labels) + soft_kl(e2, e1)).item())


# -- students -----------------------------------------------------------------------------


@pytest.fixture
def bert4(bert_config):
    from transformers import BertForSequenceClassification

    cfg = copy.deepcopy(bert_config)
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).eval()


def test_layer_drop_copies_the_chosen_layers(bert4, tmp_path):
    student = layer_drop_student(bert4, (1, 3))
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for s_idx, t_idx in ((0, 1), (1, 3)):
        s_sd = student.bert.encoder.layer[s_idx].state_dict()
        t_sd = bert4.bert.encoder.layer[t_idx].state_dict()
        assert all(torch.equal(s_sd[k], t_sd[k]) for k in t_sd)
    assert torch.equal(student.classifier.weight, bert4.classifier.weight)
    assert len(bert4.bert.encoder.layer) == 4  # the teacher is untouched
    ids = torch.randint(0, 1000, (2, 7))
    back = mp.load(mp.save(student, tmp_path / "s"))
    assert torch.equal(back(input_ids=ids).logits, student(input_ids=ids).logits)
    assert layer_drop_student(bert4).config.num_hidden_layers == 2  # default: (1, 3)
    for bad in ((), (0, 4), (2, 1), (1, 1)):
        with pytest.raises(ConfigError):
            layer_drop_student(bert4, bad)


def test_layer_drop_llama_renumbers_cache_layers(tiny_llama):
    student = layer_drop_student(tiny_llama, (1,))
    assert student.config.num_hidden_layers == 1
    assert student.model.layers[0].self_attn.layer_idx == 0
    ids = torch.randint(0, 1000, (1, 5))
    out = student.generate(ids, max_new_tokens=3, do_sample=False)  # uses the KV cache
    assert out.shape == (1, 8)


def test_narrow_student_slices_the_teacher(tiny_bert, tiny_llama, tmp_path):
    s = narrow_student(tiny_bert, 0.5)
    assert (
        s.config.hidden_size == 16 and s.config.num_attention_heads == 1 and s.config.intermediate_size == 32
    )
    assert torch.equal(
        s.bert.embeddings.word_embeddings.weight, tiny_bert.bert.embeddings.word_embeddings.weight[:, :16]
    )
    q_t, q_s = (
        tiny_bert.bert.encoder.layer[0].attention.self.query.weight,
        s.bert.encoder.layer[0].attention.self.query.weight,
    )
    assert torch.equal(q_s, q_t[:16, :16])  # the first head kept whole (head size 16)
    ids = torch.randint(0, 1000, (2, 6))
    back = mp.load(mp.save(s, tmp_path / "s"))
    assert torch.equal(back(input_ids=ids).logits, s(input_ids=ids).logits)
    ls = narrow_student(tiny_llama, 0.5)  # 4 heads / 2 kv heads -> 2 / 1, head_dim 16 kept
    assert (ls.config.num_attention_heads, ls.config.num_key_value_heads, ls.config.hidden_size) == (2, 1, 32)
    assert ls(input_ids=ids).logits.shape == (2, 6, 30522)
    lenet = LeNet300100()
    half = narrow_student(lenet, 0.5)
    assert half.hidden == (150, 50) and torch.equal(half.fc2.weight, lenet.fc2.weight[:50, :150])
    back = mp.load(mp.save(half, tmp_path / "lenet"))
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(back(x), half(x)) and back.hidden == (150, 50)
    with pytest.raises(ConfigError, match="width"):
        narrow_student(lenet, 1.0)
    with pytest.raises(ConfigError, match="transformers models"):
        narrow_student(nn.Linear(4, 4), 0.5)


# -- training -------------------------------------------------------------------------------


def _digit_batches(n_batches=4, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        x = torch.rand(bs, 1, 28, 28, generator=g)
        labels = (x.flatten(1)[:, :392].sum(1) > x.flatten(1)[:, 392:].sum(1)).long()
        out.append({"x": x, "labels": labels, "index": torch.arange(b * bs, (b + 1) * bs)})
    return out


def test_gradients_reach_only_the_student(bert4):
    student = layer_drop_student(bert4, (1, 3))
    cfg = DistillConfig(hidden=1.0, cosine=1.0, relational=1.0)
    obj = _Objective(cfg, student, bert4, (1, 3), None)
    batch = {
        "input_ids": torch.randint(0, 1000, (3, 6)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0]),
        "index": torch.arange(3),
    }
    for p in bert4.parameters():
        p.requires_grad_(False)
    loss = obj(nn.ModuleDict({"student": student}), batch)
    loss.backward()
    assert all(p.grad is None for p in bert4.parameters())
    assert all(p.grad is not None for p in student.bert.encoder.parameters())


def test_distill_trains_and_caches_teacher_logits():
    torch.manual_seed(0)
    teacher = LeNet300100(hidden=(64, 32))
    data = _digit_batches()
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    student = narrow_student(teacher, 0.5)
    before = [p.detach().clone() for p in student.parameters()]
    res = distill(student, teacher, data, DistillConfig(student="input", epochs=3, lr=1e-2), progress=False)
    assert res.steps == 12
    # one teacher pass per batch for the compatibility check, then once per batch: later
    # epochs read the cache
    assert len(calls) == 1 + len(data)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert all(p.requires_grad for p in teacher.parameters())  # flags restored


@pytest.mark.parametrize(
    "extra",
    [
        dict(attention=1.0),
        dict(hidden=1.0, cosine=0.5),
        dict(self_distill=1.0),
        dict(mutual=True),
        dict(relational=1.0),
    ],
)
def test_every_loss_trains_a_bert_student(bert4, extra, tmp_path):
    student = layer_drop_student(bert4, (0, 2)) if "mutual" not in extra else narrow_student(bert4, 0.5)
    batch = {
        "input_ids": torch.randint(0, 1000, (4, 6)),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
        "index": torch.arange(4),
    }
    before = student.classifier.weight.detach().clone()
    res = distill(
        student,
        bert4,
        [batch],
        DistillConfig(student="input", epochs=2, lr=1e-3, **extra),
        kept=(0, 2),
        progress=False,
    )
    assert res.steps == 2 and all(math.isfinite(h["loss"]) for h in res.history)
    assert not torch.equal(before, student.classifier.weight)
    assert bert4.config._attn_implementation == student.config._attn_implementation  # restored


def test_narrow_bert_hidden_loss_uses_a_projection(bert4):
    student = narrow_student(bert4, 0.5)
    batch = {"input_ids": torch.randint(0, 1000, (4, 6)), "labels": torch.tensor([0, 1, 0, 1])}
    res = distill(
        student, bert4, [batch], DistillConfig(student="input", epochs=1, hidden=1.0), progress=False
    )
    assert res.steps == 1
    assert not hasattr(student, "projection")  # the projection is not part of the student


def test_compress_builds_a_smaller_student_and_records_the_recipe(tiny_bert_dir, small_splits, tmp_path):
    task = TextClassificationTask(local_source(str(tiny_bert_dir)), small_splits, seq_len=16)
    teacher = task.load_original(progress=False)
    out = mp.compress(teacher, DistillConfig(layers=(1,), epochs=1, max_steps=3), data=task, progress=False)
    assert out.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    assert [c.name for c in mp.recipe_of(out)] == ["distill"]
    back = mp.load(mp.save(out, tmp_path / "a"))
    batch = next(iter(task.batches("test", 8)))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
    assert torch.equal(back(**inputs).logits, out(**inputs).logits)
    # distillation then INT8 in one recipe
    both = mp.compress(teacher, PRESETS.get("distill-3l+int8").build(), data=task, progress=False)
    assert [c.name for c in mp.recipe_of(both)] == ["distill", "int8-dynamic"]
    assert both.config.num_hidden_layers == 1  # 2 -> every other block, ending with the last


def test_general_then_task_distillation(bert4):
    """Step 1: general distillation on unlabeled inputs (features only); step 2: task
    distillation of the same student against the same teacher."""
    g = torch.Generator().manual_seed(0)
    unlabeled = [{"input_ids": torch.randint(0, 1000, (4, 6), generator=g)} for _ in range(2)]
    recipe = Recipe(
        [
            DistillConfig(layers=(1, 3), unlabeled=True, alpha=0.0, hidden=1.0, attention=1.0, epochs=1),
            DistillConfig(student="input", epochs=1),
        ]
    )
    out = mp.compress(bert4, recipe, data=unlabeled, progress=False)
    assert out.config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match=r"labels|nothing to learn"):
        # the second step found no labels and its teacher has no features to learn from
        DistillConfig(student="input", unlabeled=True, alpha=0.0)


def test_bad_input_is_a_clear_error(tiny_llama, tiny_bert, llama_config, bert_config):
    from transformers import BertForSequenceClassification, LlamaForCausalLM

    ids = {"input_ids": torch.randint(0, 1000, (2, 5))}
    other = copy.deepcopy(llama_config)
    other.vocab_size = 1000
    with pytest.raises(ConfigError, match="vocabularies differ"):
        distill(LlamaForCausalLM(other), tiny_llama, [ids], DistillConfig(student="input"), progress=False)
    three = copy.deepcopy(bert_config)
    three.num_labels = 3
    with pytest.raises(ConfigError, match="labels"):
        distill(
            BertForSequenceClassification(three),
            tiny_bert,
            [dict(ids, labels=torch.tensor([0, 1]))],
            DistillConfig(student="input"),
            progress=False,
        )
    with pytest.raises(ConfigError, match="teacher="):
        mp.compress(tiny_bert, DistillConfig(student="input"), data=[ids])
    with pytest.raises(ConfigError, match="needs training data"):
        mp.compress(tiny_bert, DistillConfig())
    with pytest.raises(ConfigError, match="student must be"):
        DistillConfig(student="wide")
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ConfigError, match=r"distill: width must be a number in \(0, 1\), got 1"):
        DistillConfig(width=1)
    with pytest.raises(ConfigError, match="layers only applies"):
        DistillConfig(student="narrow", layers=(1,))
    with pytest.raises(ConfigError, match=r"distill \(student: layer-drop\) needs a transformers model"):
        mp.compress(LeNet300100(), DistillConfig(), data=_digit_batches(1))
    with pytest.raises(ConfigError, match="unknown field"):
        DistillConfig.from_dict({"method": "distill", "temprature": 2})


def test_config_round_trips_and_presets_exist():
    cfg = DistillConfig(layers=(0, 2), hidden=0.5, checkpoint_dir="ckpt")
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert next(iter(Recipe.from_list(Recipe([cfg]).to_list()))) == cfg
    for name in ("distill-3l", "distill-3l+int8", "distill-half-width"):
        assert PRESETS.get(name).family == "distillation"


def test_distill_resumes_from_a_checkpoint(tmp_path):
    data = _digit_batches(n_batches=3)

    def run(interrupt: bool):
        torch.manual_seed(0)
        teacher = LeNet300100(hidden=(32, 16))
        torch.manual_seed(1)
        student = LeNet300100(hidden=(16, 8))
        cfg = DistillConfig(
            student="input", epochs=2, lr=1e-2, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2
        )
        if interrupt:
            from modelpress.methods.distillation import distill as mod

            real = mod._Objective.__call__
            count = {"n": 0}

            def flaky(self, trainee, batch):
                count["n"] += 1
                if count["n"] == 4:
                    raise KeyboardInterrupt
                return real(self, trainee, batch)

            mod._Objective.__call__ = flaky
            try:
                with pytest.raises(KeyboardInterrupt):
                    distill(student, teacher, data, cfg, progress=False)
            finally:
                mod._Objective.__call__ = real
            torch.manual_seed(1)
            student = LeNet300100(hidden=(16, 8))
        distill(student, teacher, data, cfg, progress=False)
        return student

    resumed = run(True)
    import shutil

    shutil.rmtree(tmp_path / "ck")
    straight = run(False)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b)
