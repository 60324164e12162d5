"""Distillation: losses against hand-computed values, chunking, LoRA adapters over QuantLinear, what trains,
one step lowering the loss, sparsity and packed weights unchanged, checkpoint resume, bad arguments; scale-only
tuning (``tune_scales_``: codes and zero points kept, scales changed, loss lowered) and its CLI options."""
import copy
import math
import os

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.distill import (batch_loss, chunked_logit_loss, distill, forward_kl_per_token,
                                     hidden_state_loss, jsd_per_token, per_token_loss, reverse_kl_per_token,
                                     seed_kd_per_token, select_trainable_)
from llmlite_kernels.nn.lora import LoRALinear, add_lora_, lora_layers, merge_lora_and_requantize_
from tiny_models import tiny_model

LN3 = math.log(3.0)
# Token 0: teacher [0, 0] -> p = (1/2, 1/2); student [ln 3, 0] -> q = (3/4, 1/4). Token 1: identical logits.
TEACHER = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
STUDENT = torch.tensor([[LN3, 0.0], [1.0, 1.0]])


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_seed_loss_hand_value():
    # ||p - q||^2 = 2 * (1/4)^2 = 1/8; ||f - g||^2 = (ln 3)^2; E = mean over the 2 tokens.
    per_token = seed_kd_per_token(TEACHER, STUDENT, alpha=0.3, beta=2.0)
    assert per_token.tolist() == pytest.approx([2.0 / 8 + 0.3 * LN3**2, 0.0], abs=1e-6)
    fn = per_token_loss("seed", alpha=0.3, beta=2.0)
    value = chunked_logit_loss(fn, STUDENT, TEACHER, torch.nn.Identity(), torch.nn.Identity(), chunk_tokens=1)
    assert value.item() == pytest.approx((2.0 / 8 + 0.3 * LN3**2) / 2, abs=1e-6)


def test_forward_and_reverse_kl_hand_values():
    p, q = (0.5, 0.5), (0.75, 0.25)
    assert forward_kl_per_token(TEACHER, STUDENT)[0].item() == pytest.approx(kl(p, q), abs=1e-6)
    assert reverse_kl_per_token(TEACHER, STUDENT)[0].item() == pytest.approx(kl(q, p), abs=1e-6)
    # T = 2: student logits / 2 = [ln sqrt 3, 0] -> q_T = (sqrt3, 1) / (1 + sqrt3); scaled by T^2 = 4.
    r3 = math.sqrt(3.0)
    q_t = (r3 / (1 + r3), 1 / (1 + r3))
    assert forward_kl_per_token(TEACHER, STUDENT, temperature=2.0)[0].item() == pytest.approx(4 * kl(p, q_t), abs=1e-6)
    assert forward_kl_per_token(TEACHER, STUDENT)[1].item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("beta", [0.5, 0.25])
def test_jsd_hand_value(beta):
    p, q = (0.5, 0.5), (0.75, 0.25)
    m = tuple(beta * a + (1 - beta) * b for a, b in zip(p, q))
    expected = beta * kl(p, m) + (1 - beta) * kl(q, m)
    assert jsd_per_token(TEACHER, STUDENT, beta=beta)[0].item() == pytest.approx(expected, abs=1e-6)


def test_hidden_state_loss_hand_value():
    ht = [torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 0.0]])]
    hs = [torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])]
    # layer 0: mean((0, 1)^2) / mean((1, 1)) = 0.5; layer 1: 0 -> mean 0.25
    assert hidden_state_loss(hs, ht).item() == pytest.approx(0.25)


@pytest.mark.parametrize("loss", ["seed", "kl", "reverse_kl", "jsd"])
def test_chunked_loss_matches_full_and_its_gradient(loss):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 37, bias=False)
    teacher_head = torch.nn.Linear(8, 37, bias=False)
    hs = torch.randn(2, 5, 8, requires_grad=True)
    ht = torch.randn(2, 5, 8)
    fn = per_token_loss(loss, alpha=0.5, temperature=1.5)
    full = fn(teacher_head(ht).reshape(10, 37), head(hs).reshape(10, 37)).mean()
    g_full = torch.autograd.grad(full, [hs, head.weight])
    chunked = chunked_logit_loss(fn, hs, ht, head, teacher_head, chunk_tokens=3)
    g_chunked = torch.autograd.grad(chunked, [hs, head.weight])
    torch.testing.assert_close(chunked, full)
    for a, b in zip(g_chunked, g_full):
        torch.testing.assert_close(a, b)


def quantized_tiny(kind="llama", bits=3, seed=0):
    torch.manual_seed(seed)
    teacher = tiny_model(kind)
    student = L.quantize_(copy.deepcopy(teacher), L.QuantConfig(bits=bits, group_size=32), progress=False)
    return teacher, student


def test_lora_starts_as_identity_and_gradient_reaches_adapters_through_lowbit_op():
    teacher, student = quantized_tiny()
    ids = torch.randint(0, 128, (2, 12))
    before = student(ids).logits
    add_lora_(student, rank=4)
    torch.testing.assert_close(student(ids).logits, before)  # B = 0
    layers = lora_layers(student)
    assert layers and all(isinstance(m.base, L.QuantLinear) for m in layers.values())
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    batch_loss(student, teacher, ids, per_token_loss("kl")).backward()
    # lora_B of the first block's q_proj gets a gradient only through every later low-bit layer's input grad.
    first = layers["model.layers.0.self_attn.q_proj"]
    assert first.lora_B.grad is not None and first.lora_B.grad.abs().sum() > 0
    for name, p in student.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    assert all(b.grad is None for b in student.buffers())


def test_merge_lora_into_linear_is_exact_and_into_quantlinear_requantizes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24)
    model = torch.nn.Sequential(linear)
    add_lora_(model, rank=2, quantized_only=False, exclude=())
    layer = model[0]
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 64)
    expected = model(x)
    merge_lora_and_requantize_(model)
    assert isinstance(model[0], torch.nn.Linear)
    torch.testing.assert_close(model(x), expected)

    q = torch.nn.Sequential(L.QuantLinear.from_linear(torch.nn.Linear(64, 24), bits=8, group_size=32))
    add_lora_(q, rank=2)
    torch.nn.init.normal_(q[0].lora_B, std=0.05)
    target = q[0].base.dequantize() + q[0].delta_weight()
    merge_lora_and_requantize_(q)
    assert isinstance(q[0], L.QuantLinear) and q[0].bits == 8
    err = (q[0].dequantize() - target).norm() / target.norm()
    assert err < 0.02


def test_one_step_lowers_loss_and_packed_weights_unchanged():
    teacher, student = quantized_tiny(bits=2)
    add_lora_(student, rank=4)
    packed = {n: b.clone() for n, b in student.named_buffers()}
    ids = torch.randint(0, 128, (4, 16))
    fn = per_token_loss("kl")
    with torch.no_grad():
        before = batch_loss(student, teacher, ids, fn).item()
    distill(student, teacher, ids, loss="kl", steps=1, batch_size=4, seq_len=16, lr=1e-3, warmup=1, progress=False)
    with torch.no_grad():
        after = batch_loss(student, teacher, ids, fn).item()
    assert after < before
    for n, b in student.named_buffers():
        assert torch.equal(b, packed[n]), n


def test_sparse_student_trains_kept_weights_only():
    from llmlite_kernels.config import PruneConfig
    from llmlite_kernels.prune import prune_

    torch.manual_seed(0)
    teacher = tiny_model("llama")
    student = prune_(copy.deepcopy(teacher), PruneConfig(method="magnitude", pattern="2:4"), progress=False)
    sparse = {n: m for n, m in student.named_modules() if isinstance(m, L.nn.SparseLinear)}
    masks = {n: m.mask().clone() for n, m in sparse.items()}
    weights = {n: m.weight.detach().clone() for n, m in sparse.items()}
    ids = torch.randint(0, 128, (4, 16))
    _, log = distill(student, teacher, ids, loss="seed", steps=2, batch_size=4, seq_len=16, lr=1e-3,
                     progress=False)
    assert len(log) == 2
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{p}" for n, m in sparse.items() for p, _ in m.named_parameters()}
    for n, m in sparse.items():
        assert torch.equal(m.mask(), masks[n])
        assert torch.all(m.weight[~masks[n]] == 0), n
        assert not torch.equal(m.weight, weights[n]), n  # kept weights moved
    # the gradient itself is zero at pruned positions
    student.zero_grad()
    batch_loss(student, teacher, ids, per_token_loss("kl")).backward()
    for n, m in sparse.items():
        assert torch.all(m.weight.grad[~masks[n]] == 0) and m.weight.grad[masks[n]].abs().sum() > 0


def test_checkpoint_resume_gives_same_state(tmp_path):
    teacher, student = quantized_tiny()
    add_lora_(student, rank=4)
    for m in lora_layers(student).values():
        torch.nn.init.normal_(m.lora_B, std=0.01)
    windows = torch.randint(0, 128, (6, 16))
    kwargs = dict(loss="jsd", steps=4, batch_size=2, seq_len=16, lr=1e-3, progress=False)
    straight = copy.deepcopy(student)
    distill(straight, teacher, windows, checkpoint_dir=str(tmp_path / "a"), **kwargs)

    resumed = copy.deepcopy(student)
    distill(resumed, teacher, windows, checkpoint_dir=str(tmp_path / "b"), **{**kwargs, "steps": 2})
    assert sorted(os.listdir(tmp_path / "b")) == ["distill_state.json", "distill_state.safetensors"]
    fresh = copy.deepcopy(student)  # its adapters are overwritten by the checkpoint
    _, log = distill(fresh, teacher, windows, checkpoint_dir=str(tmp_path / "b"), resume=True, **kwargs)
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    for (n, a), (_, b) in zip(straight.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=n)


def test_dense_student_trains_everything_and_hidden_term():
    torch.manual_seed(0)
    teacher = tiny_model("gpt2")
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    _, log = distill(student, teacher, torch.randint(0, 128, (2, 16)), loss="reverse_kl", steps=1, batch_size=2,
                     seq_len=16, hidden_weight=0.5, progress=False)
    assert all(p.requires_grad for p in student.parameters()) and log[0]["loss"] > 0


def test_time_budget_stops_before_a_step_would_overrun_it(monkeypatch):
    """A fake clock (every reading 10 ms later) makes the step times equal, so the rule is exact."""
    from llmlite_kernels.distill import trainer

    readings = iter(0.01 * i for i in range(1, 10**6))
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(readings))
    torch.manual_seed(0)
    teacher = tiny_model("gpt2")
    _, log = distill(copy.deepcopy(teacher), teacher, torch.randint(0, 128, (4, 16)), loss="kl", steps=1000,
                     batch_size=2, seq_len=16, max_seconds=0.5, progress=False)
    # two clock readings per step (its start, its log entry): steps of 0.02 s, the clock starting at 0.01.
    # Step 25 would start at 0.49 s and end at 0.51 s, past the budget: 24 steps run. (A rule that only
    # checks the budget before starting a step would run step 25 too.)
    assert [round(entry["seconds"], 6) for entry in log] == [round(0.02 * (i + 1), 6) for i in range(24)]


@pytest.mark.parametrize("kwargs, word", [
    (dict(loss="mse"), "loss"), (dict(steps=0), "steps"), (dict(batch_size=-1), "batch_size"),
    (dict(seq_len=1.5), "seq_len"), (dict(lr=0.0), "lr"), (dict(loss="kl", temperature=0.0), "temperature"),
    (dict(loss="jsd", beta=1.0), "beta"), (dict(loss="seed", alpha=-1.0), "alpha"),
    (dict(resume=True), "checkpoint_dir"), (dict(hidden_weight=-1.0), "hidden_weight"),
    (dict(train="lora"), "train"), (dict(), "add_lora_"),
])
def test_bad_arguments(kwargs, word):
    teacher, student = quantized_tiny()
    with pytest.raises(ValueError, match=word):
        distill(student, teacher, torch.randint(0, 128, (2, 8)),
                **{"seq_len": 8, "batch_size": 2, "steps": 1, "progress": False, **kwargs})


def test_add_lora_bad_arguments():
    _, student = quantized_tiny()
    with pytest.raises(ValueError, match="rank"):
        add_lora_(copy.deepcopy(student), rank=0)
    with pytest.raises(ValueError, match="matched no"):
        add_lora_(copy.deepcopy(student), include=["no_such_layer"])
    with pytest.raises(ValueError, match="loss"):
        per_token_loss("hinge")
    with pytest.raises(ValueError, match="tokens"):
        seed_kd_per_token(torch.zeros(2, 3), torch.zeros(2, 4))
    assert isinstance(add_lora_(student, rank=2).model.layers[0].mlp.up_proj, LoRALinear)


def test_trainable_group_scales_get_gradient_and_merge_into_stored_scales():
    teacher, student = quantized_tiny()
    add_lora_(student, rank=2, train_scales=True)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        reference = L.quantize_(copy.deepcopy(teacher), L.QuantConfig(bits=3, group_size=32), progress=False)(ids).logits
        torch.testing.assert_close(student(ids).logits, reference, rtol=1e-4, atol=1e-5)  # factors start at 1
    distill(student, teacher, ids, loss="kl", steps=2, batch_size=2, seq_len=12, lr=1e-2, progress=False)
    layer = lora_layers(student)["model.layers.1.mlp.down_proj"]
    assert layer.scale_factor.requires_grad and not torch.all(layer.scale_factor == 1)
    with torch.no_grad():
        for m in lora_layers(student).values():
            m.lora_B.zero_()  # isolate the scale path: merging it must not re-round anything
        expected = student(ids).logits
        merge_lora_and_requantize_(student)
        assert not lora_layers(student)
        out = student(ids).logits
    assert (out - expected).norm() / expected.norm() < 2e-3  # fp16 rounding of the folded scales


def test_tune_scales_keeps_codes_and_zero_points_changes_scales_and_lowers_the_loss():
    teacher, student = quantized_tiny(bits=2)
    ids = torch.randint(0, 128, (4, 16))
    per_token = per_token_loss("kl")
    before_layers = {n: (m.weight_packed.clone(), m.weight_zero_point.clone(), m.weight_scale.clone())
                     for n, m in student.named_modules() if isinstance(m, L.QuantLinear)}
    with torch.no_grad():
        loss_before = batch_loss(student, teacher, ids, per_token).item()
    student, log = L.tune_scales_(student, teacher, ids, steps=12, batch_size=4, lr=2e-2, progress=False)
    assert len(log) == 12 and not lora_layers(student)
    layers = {n: m for n, m in student.named_modules() if isinstance(m, L.QuantLinear)}
    assert set(layers) == set(before_layers)
    for name, (packed, zero, scale) in before_layers.items():
        assert torch.equal(layers[name].weight_packed, packed) and torch.equal(layers[name].weight_zero_point, zero)
        assert layers[name].weight_scale.dtype == scale.dtype and not torch.equal(layers[name].weight_scale, scale)
    with torch.no_grad():
        assert batch_loss(student, teacher, ids, per_token).item() < loss_before


def test_rank_zero_adapter_trains_only_scale_factors():
    teacher, student = quantized_tiny()
    add_lora_(student, rank=0, train_scales=True)
    layer = lora_layers(student)["model.layers.0.mlp.up_proj"]
    assert layer.lora_A is None and layer.lora_B is None and not layer.delta_weight().any()
    assert select_trainable_(student) == "lora"
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("scale_factor") for n in trainable)
    with pytest.raises(ValueError, match="rank"):
        add_lora_(copy.deepcopy(teacher), rank=0, quantized_only=False, train_scales=False)
    with pytest.raises(ValueError, match="rank=0 trains group scales only"):
        add_lora_(copy.deepcopy(teacher), rank=0, quantized_only=False, exclude=(), train_scales=True)
    with pytest.raises(ValueError, match="already has LoRA"):
        L.tune_scales_(student, teacher, torch.randint(0, 128, (2, 8)), steps=1, batch_size=2, progress=False)


def test_teacher_on_another_device_is_refused():
    teacher, student = quantized_tiny()
    add_lora_(student, rank=2)
    with pytest.raises(ValueError, match="same device"):
        distill(student, teacher.to("meta"), torch.randint(0, 128, (2, 8)), steps=1, batch_size=2, progress=False)


class _ByteTokenizer:
    """Stand-in tokenizer: one token per byte, modulo the tiny models' vocabulary of 128."""

    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        ids = torch.tensor([b % 128 for b in text.encode()], dtype=torch.long)[None]
        return type("Encoding", (), {"input_ids": ids})()

    def save_pretrained(self, folder):
        pass


def test_cli_distill_merges_adapters(monkeypatch, tmp_path, capsys):
    import llmlite_kernels.models as models
    from llmlite_kernels.cli import main

    teacher, student = quantized_tiny()
    monkeypatch.setattr(models, "load_model", lambda path=None: (student, None) if path == "student"
                        else (teacher, _ByteTokenizer()))
    text = tmp_path / "train.txt"
    text.write_text("distillation recovers what compression loses. " * 20)
    assert main(["distill", "student", "--text", str(text), "--loss", "kl", "--steps", "2", "--seq-len", "16",
                 "--batch-size", "2", "--windows", "0", "--merge", "--lora-rank", "2"]) == 0
    assert "distilled (kl) for 2 steps" in capsys.readouterr().out
    assert not lora_layers(student) and any(isinstance(m, L.QuantLinear) for m in student.modules())


def test_cli_distill_trains_scales_alone_with_rank_zero(monkeypatch, tmp_path, capsys):
    import llmlite_kernels.models as models
    from llmlite_kernels.cli import main

    teacher, student = quantized_tiny()
    codes = {n: m.weight_packed.clone() for n, m in student.named_modules() if isinstance(m, L.QuantLinear)}
    monkeypatch.setattr(models, "load_model", lambda path=None: (student, None) if path == "student"
                        else (teacher, _ByteTokenizer()))
    text = tmp_path / "train.txt"
    text.write_text("distillation recovers what compression loses. " * 20)
    assert main(["distill", "student", "--text", str(text), "--loss", "kl", "--steps", "2", "--seq-len", "16",
                 "--batch-size", "2", "--windows", "0", "--merge", "--lora-rank", "0", "--train-scales"]) == 0
    assert "distilled (kl) for 2 steps" in capsys.readouterr().out
    layers = {n: m for n, m in student.named_modules() if isinstance(m, L.QuantLinear)}
    assert not lora_layers(student) and all(torch.equal(layers[n].weight_packed, c) for n, c in codes.items())


def test_cli_compress_tunes_scales_from_the_float_model(monkeypatch, tmp_path, capsys):
    import llmlite_kernels.models as models
    from llmlite_kernels.cli import main

    torch.manual_seed(0)
    dense = tiny_model("llama")
    monkeypatch.setattr(models, "load_model", lambda path=None: (copy.deepcopy(dense), _ByteTokenizer()))
    assert main(["compress", "--bits", "3", "--group-size", "32", "--windows", "0", "--decode-tokens", "0",
                 "--lm-head-bits", "0", "--tune-scales-steps", "2", "--output", str(tmp_path / "tuned")]) == 0
    assert "tuned the group scales by distillation: 2 steps" in capsys.readouterr().out
    assert main(["compress", "--bits", "3", "--group-size", "32", "--windows", "0", "--decode-tokens", "0",
                 "--lm-head-bits", "0", "--output", str(tmp_path / "plain")]) == 0
    tuned, _ = L.load(tmp_path / "tuned", with_tokenizer=False)
    plain, _ = L.load(tmp_path / "plain", with_tokenizer=False)
    layer_t, layer_p = tuned.model.layers[0].mlp.up_proj, plain.model.layers[0].mlp.up_proj
    assert torch.equal(layer_t.weight_packed, layer_p.weight_packed)
    assert not torch.equal(layer_t.weight_scale, layer_p.weight_scale)
