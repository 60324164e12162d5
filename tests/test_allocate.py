"""Adaptive bit allocation: never over budget, optimal on small cases, plan applied, saved and reloaded."""
import itertools
import random

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.quantization.allocate import allocate, read_bit_plan
from llmlite_kernels.quantization.sensitivity import Option, layer_options

from tiny_models import tiny_model, tokens


def _random_problem(rng, layers, choices, size_range):
    return {f"l{i}": [Option(2 + j, 32, rng.randint(*size_range), rng.random() * 10 ** rng.randint(-2, 2))
                      for j in range(choices)] for i in range(layers)}


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_finds_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    options = _random_problem(rng, layers=5, choices=3, size_range=(1, 40))
    sizes = [min(o.size_bits for o in opts) for opts in options.values()]
    for budget in (sum(sizes), sum(sizes) + 17, 90, 200):
        feasible = [c for c in itertools.product(*options.values()) if sum(o.size_bits for o in c) <= budget]
        if not feasible:
            continue
        best = min(sum(o.error for o in c) for c in feasible)
        plan = allocate(options, budget)
        assert sum(o.size_bits for o in plan.values()) <= budget
        assert sum(o.error for o in plan.values()) == pytest.approx(best, rel=1e-12)


def test_never_over_budget_with_coarse_units_and_infeasible_budget_raises():
    rng = random.Random(1)
    options = _random_problem(rng, layers=40, choices=6, size_range=(10_000, 900_000))
    low = sum(min(o.size_bits for o in v) for v in options.values())
    high = sum(max(o.size_bits for o in v) for v in options.values())
    for budget in (low + 5, (low + high) // 2, high):
        plan = allocate(options, budget, max_units=500)
        assert sum(o.size_bits for o in plan.values()) <= budget
    with pytest.raises(ValueError, match="budget"):
        allocate(options, low - 1)


def test_layer_options_sizes_are_the_packed_sizes():
    w = torch.randn(20, 100)
    for opt in layer_options(w, None, (2, 3), (32, -1), symmetric=False):
        assert opt.size_bits == 8 * L.quantize(w, opt.bits, opt.group_size, False).nbytes


def test_auto_bits_plan_is_applied_within_budget_saved_and_reloaded(tmp_path, capsys):
    model = tiny_model("llama")
    ids = tokens(2, 12)
    config = L.QuantConfig(bits="auto", avg_bits=3.5, method="gptq", candidate_group_sizes=(32, -1), calib_windows=4)
    L.quantize_(model, config, calibration_texts=torch.randint(0, 128, (4, 16)), progress=True)
    assert "bit plan" in capsys.readouterr().out
    plan = model.llmlite_bit_plan
    layers = {n: m for n, m in model.named_modules() if type(m).__name__ == "QuantLinear"}
    assert set(layers) == set(plan["layers"])
    stored = sum(m.packed.nbytes for m in layers.values()) * 8
    numel = sum(m.in_features * m.out_features for m in layers.values())
    assert stored / numel <= 3.5 and stored / numel == pytest.approx(plan["avg_bits"])
    for name, m in layers.items():
        assert (m.bits, m.group_size) == (plan["layers"][name]["bits"], plan["layers"][name]["group_size"])
    assert len({m.bits for m in layers.values()}) > 1  # 3.5 bits/weight needs mixing widths
    L.save(model, str(tmp_path / "auto"), extra={"bit_plan": plan})
    assert read_bit_plan(str(tmp_path / "auto")) == plan
    loaded, _ = L.load(str(tmp_path / "auto"))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    for name, m in loaded.named_modules():
        if name in plan["layers"]:
            assert m.bits == plan["layers"][name]["bits"]


def test_auto_bits_needs_avg_bits_and_valid_candidates():
    with pytest.raises(ValueError, match="avg_bits"):
        L.QuantConfig(bits="auto")
    with pytest.raises(ValueError, match="candidate_bits"):
        L.QuantConfig(bits="auto", avg_bits=3, candidate_bits=(5,))
    with pytest.raises(ValueError, match="group_size"):
        L.QuantConfig(bits="auto", avg_bits=3, candidate_group_sizes=(48,))
    with pytest.raises(ValueError, match="sensitivity"):
        L.QuantConfig(bits="auto", avg_bits=3, sensitivity="hessian")


def _fisher_case(kind):
    """A tiny model, its Linears but lm_head, three windows."""
    from llmlite_kernels.models import iter_linears

    torch.manual_seed(0)
    model = tiny_model(kind)
    return model, dict(iter_linears(model, (), ["lm_head"])), tokens(3, 10)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_fisher_diagonal_is_the_mean_squared_window_gradient(kind):
    from llmlite_kernels.nn.quant_linear import linear_weight
    from llmlite_kernels.quantization.fisher import fisher_diagonals

    model, targets, windows = _fisher_case(kind)
    fisher = fisher_diagonals(model, targets, windows, progress=False)
    expected = {n: torch.zeros_like(linear_weight(m)) for n, m in targets.items()}
    for window in windows:
        model.zero_grad()
        logits = model(window[None]).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits, window[1:]).backward()
        for n, m in targets.items():
            expected[n] += linear_weight(m).grad.square() / len(windows) if kind == "llama" \
                else m.weight.grad.t().square() / len(windows)
    for n in targets:
        assert fisher[n].shape == linear_weight(targets[n]).shape
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_fisher_sensitivity_is_the_weighted_squared_error():
    w = torch.randn(8, 64)
    f = torch.rand(8, 64)
    for opt in layer_options(w, None, (2, 4), (32,), symmetric=False, fisher=f):
        q = L.quantize(w, opt.bits, opt.group_size, False).dequantize(torch.float32)
        assert opt.error == pytest.approx(float(((w - q) ** 2 * f).sum()), rel=1e-4)
    with pytest.raises(ValueError, match="fisher"):
        layer_options(w, None, (4,), (32,), symmetric=False, fisher=f[:, :10])


def test_output_fisher_sensitivity_weighs_each_channels_output_error():
    torch.manual_seed(0)
    w = torch.randn(12, 80)
    x = torch.randn(400, 80) * torch.rand(80) * 2
    h = x.T @ x / 400
    f = torch.rand(12)
    rtn = layer_options(w, h, (2, 3, 4), (32, -1), symmetric=False, output_fisher=f)
    for opt in rtn:
        e = w - L.quantize(w, opt.bits, opt.group_size, False).dequantize(torch.float32)
        assert opt.error == pytest.approx(float((((e @ h) * e).sum(1) * f).sum()), rel=1e-4)
    gptq = layer_options(w, h, (2, 3, 4), (32, -1), symmetric=False, output_fisher=torch.ones(12),
                         gptq=dict(act_order=True))
    plain = layer_options(w, h, (2, 3, 4), (32, -1), symmetric=False, output_fisher=torch.ones(12))
    assert [o.size_bits for o in gptq] == [o.size_bits for o in plain]
    assert sum(o.error for o in gptq) < sum(o.error for o in plain)  # GPTQ minimises exactly this error
    with pytest.raises(ValueError, match="output_fisher"):
        layer_options(w, h, (4,), (32,), symmetric=False, output_fisher=f[:5])
    with pytest.raises(ValueError, match="hessian"):
        layer_options(w, None, (4,), (32,), symmetric=False, output_fisher=f)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_output_fisher_is_the_token_summed_squared_output_gradient(kind):
    from llmlite_kernels.quantization.fisher import output_fishers

    model, targets, windows = _fisher_case(kind)
    before = {n: p.clone() for n, p in model.named_parameters()}
    fisher = output_fishers(model, targets, windows, progress=False)
    expected = {n: 0 for n in targets}
    for window in windows:
        outputs = {}
        hooks = [m.register_forward_hook(lambda mod, a, out, n=n: outputs.__setitem__(n, out)) for n, m in targets.items()]
        logits = model(window[None]).logits[0, :-1]
        for h in hooks:
            h.remove()
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, window[1:]), list(outputs.values()))
        for n, g in zip(outputs, grads):
            expected[n] = expected[n] + g.reshape(-1, g.shape[-1]).square().sum(0) / len(windows)
    for n in targets:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("sensitivity,exclude", [("output", ["lm_head"]), ("fisher", ["lm_head"]),
                                                  ("output-fisher", [])])
def test_every_sensitivity_plans_within_budget(sensitivity, exclude):
    model = tiny_model("llama")
    config = L.QuantConfig(bits="auto", avg_bits=4.5, sensitivity=sensitivity, candidate_group_sizes=(32,),
                           calib_windows=2, exclude=exclude)
    threads = torch.get_num_threads()
    L.quantize_(model, config, calibration_texts=torch.randint(0, 128, (2, 16)), progress=False)
    assert torch.get_num_threads() == threads
    assert model.llmlite_bit_plan["avg_bits"] <= 4.5
    assert ("lm_head" in model.llmlite_bit_plan["layers"]) == (exclude == [])
