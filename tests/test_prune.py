"""prune_: masks and their patterns, the methods' quality ordering on a layer, save/load, bad input."""
import copy

import pytest
import torch

import llmlite_kernels as L
from llmlite_kernels.prune import is_nm, model_sparsity, nm_mask, unstructured_mask

from tiny_models import tiny_model, tokens

CALIB = dict(calib_windows=4, calib_seq_len=16)


def sparse_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, L.SparseLinear)}


def test_nm_mask_keeps_the_largest_of_each_group():
    scores = torch.tensor([[1.0, 4.0, 2.0, 3.0, 0.5, 0.1, 0.9, 0.7]])
    assert nm_mask(scores, 2, 4).tolist() == [[False, True, False, True, False, False, True, True]]
    assert unstructured_mask(scores, 0.25).tolist() == [[True, True, True, True, False, False, True, True]]


def test_unstructured_ties_are_pruned_in_index_order():
    scores = torch.tensor([[2.0, 1.0, 1.0, 1.0, 3.0, 1.0]])
    assert unstructured_mask(scores, 0.5).tolist() == [[True, False, False, False, True, True]]


def test_nm_mask_drops_as_topk_smallest():
    scores = torch.randint(0, 3, (64, 32)).float()  # many ties
    drop = scores.reshape(64, 8, 4).topk(2, dim=-1, largest=False).indices
    expected = torch.ones(64, 8, 4, dtype=torch.bool).scatter_(-1, drop, False).reshape(64, 32)
    assert torch.equal(nm_mask(scores, 2, 4), expected)


def test_unstructured_scopes():
    scores = torch.rand(6, 40)
    scores[0] += 10  # row 0 holds the layer's largest scores
    per_row = unstructured_mask(scores, 0.5, "row")
    assert (per_row.sum(1) == 20).all()
    per_layer = unstructured_mask(scores, 0.5, "layer")
    assert per_layer.sum() == 120 and per_layer[0].all()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_every_group_of_every_layer_is_valid_nm(kind, method, pattern):
    if kind == "gpt2" and pattern == "4:8" and method != "sparsegpt":
        pytest.skip("one 4:8 run on GPT-2 is enough")
    n, m = map(int, pattern.split(":"))
    model = tiny_model(kind)
    L.prune_(model, L.PruneConfig(method=method, pattern=pattern, **CALIB), tokens(4, 16), progress=False)
    layers = sparse_layers(model)
    assert layers and not any("lm_head" in name for name in layers)
    for name, layer in layers.items():
        mask = layer.mask()
        groups = mask.reshape(mask.shape[0], -1, m).sum(-1)
        assert is_nm(mask, n, m) and (groups == n).all(), name
        assert torch.all(layer.weight[~mask] == 0), name
    assert model_sparsity(model) == pytest.approx(1 - n / m)
    with torch.no_grad():
        assert torch.isfinite(model(tokens()).logits).all()


@pytest.mark.parametrize("scope", ["row", "layer"])
def test_unstructured_sparsity_is_exact(scope):
    model = tiny_model("llama")
    L.prune_(model, L.PruneConfig(method="wanda", sparsity=0.6, scope=scope, **CALIB), tokens(4, 16), progress=False)
    for layer in sparse_layers(model).values():
        kept = layer.mask().sum(1 if scope == "row" else None)
        assert torch.all(kept == round(0.4 * layer.in_features)) if scope == "row" else \
            kept == layer.in_features * layer.out_features - round(0.6 * layer.in_features * layer.out_features)


def _layer_output_error(method, pattern):
    """Output error of layers.0.self_attn.q_proj on its calibration inputs after pruning with ``method``."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    with torch.no_grad():  # heterogeneous input channels, as in real LLMs (what Wanda and SparseGPT exploit)
        model.model.layers[0].input_layernorm.weight.copy_(torch.exp(0.5 * torch.randn(96)))
    name = "model.layers.0.self_attn.q_proj"
    dense = copy.deepcopy(model.get_submodule(name))
    inputs = []
    handle = dense.register_forward_hook(lambda m, a, o: inputs.append(a[0]))
    calib = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(1))
    model.get_submodule("model.layers.0.self_attn").q_proj = dense
    with torch.no_grad():
        model(calib)
    handle.remove()
    L.prune_(model, L.PruneConfig(method=method, pattern=pattern, include=[r"layers\.0\.self_attn\.q_proj"],
                                  calib_windows=8, calib_seq_len=24), calib, progress=False)
    x = torch.cat(inputs)
    with torch.no_grad():
        return (model.get_submodule(name)(x) - dense(x)).norm().item()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_calibrated_methods_beat_magnitude_on_layer_output_error(pattern):
    errors = {m: _layer_output_error(m, pattern) for m in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_recon_is_valid_and_fits_the_dense_model_better():
    ids = tokens(8, 16)
    dense = tiny_model("llama")
    with torch.no_grad():
        expected = dense(ids).logits
    errors = {}
    for method, extra in (("sparsegpt", {}), ("sparsegpt_recon", {"recon_steps": 4, "recon_lr": 1e-3})):
        model = copy.deepcopy(dense)
        L.prune_(model, L.PruneConfig(method=method, pattern="2:4", calib_windows=8, calib_seq_len=16, **extra),
                 ids, progress=False)
        assert all(is_nm(layer.mask(), 2, 4) for layer in sparse_layers(model).values())
        with torch.no_grad():
            errors[method] = (model(ids).logits - expected).norm().item()
    assert errors["sparsegpt_recon"] < errors["sparsegpt"], errors


def test_save_load_gives_bit_identical_logits(tmp_path):
    model = tiny_model("llama")
    L.prune_(model, L.PruneConfig(method="wanda", pattern="2:4", **CALIB), tokens(4, 16), progress=False)
    ids = tokens()
    with torch.no_grad():
        expected = model(ids).logits
    L.save(model, tmp_path, extra={"prune_config": model.llmlite_prune_config})
    loaded, _ = L.load(tmp_path)
    layers = sparse_layers(loaded)
    assert layers.keys() == sparse_layers(model).keys()
    for name, layer in layers.items():
        assert torch.equal(layer.mask_bits, model.get_submodule(name).mask_bits)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)


def test_bad_config_and_inputs_name_the_field():
    cases = [
        (dict(method="obs"), "method"),
        (dict(pattern="3:4"), "pattern"),
        (dict(sparsity=1.5), "sparsity"),
        (dict(sparsity="half"), "sparsity"),
        (dict(pattern="2:4", sparsity=0.7), "sparsity"),
        (dict(scope="column"), "scope"),
        (dict(calib_windows=0), "calib_windows"),
        (dict(blocksize=-1), "blocksize"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ValueError, match=field):
            L.PruneConfig(**kwargs)
    with pytest.raises(ValueError, match="in_features=10"):
        L.prune_(torch.nn.Sequential(torch.nn.Linear(10, 8)), L.PruneConfig(method="magnitude", pattern="2:4"))
    with pytest.raises(ValueError, match="no nn.Linear"):
        L.prune_(tiny_model("llama"), L.PruneConfig(method="magnitude", include=["nothing"]), progress=False)
    with pytest.raises(ValueError, match="tokenizer="):
        L.prune_(tiny_model("llama"), L.PruneConfig(method="wanda"), ["some text"], progress=False)


def test_magnitude_needs_no_calibration_and_keeps_the_largest_weights_of_each_row():
    model = tiny_model("opt")
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    L.prune_(model, L.PruneConfig(method="magnitude", sparsity=0.5), progress=False)
    for name, layer in sparse_layers(model).items():
        w, mask = original[name].abs(), layer.mask()
        smallest_kept = w.masked_fill(~mask, float("inf")).amin(1)
        largest_pruned = w.masked_fill(mask, -1.0).amax(1)
        assert torch.all(smallest_kept >= largest_pruned), name
        assert torch.equal(layer.weight.detach(), original[name] * mask)


def test_cli_prune_reports_and_saves(tmp_path, monkeypatch, capsys):
    from llmlite_kernels import cli, models

    monkeypatch.setattr(models, "load_model", lambda path=None: (tiny_model("llama"), None))
    assert cli.main(["prune", "--method", "magnitude", "--pattern", "2:4", "--windows", "0",
                     "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sparsity of the pruned layers" in out and "0.500" in out
    loaded, _ = L.load(tmp_path)
    assert all(is_nm(layer.mask(), 2, 4) for layer in sparse_layers(loaded).values())
    with pytest.raises(ValueError, match="pattern"):
        cli.main(["prune", "--pattern", "1:3", "--windows", "0"])


def test_linear_subsets_follow_call_order_and_shared_inputs():
    from llmlite_kernels.calibration import block_linears, capture_block_inputs, decoder_blocks, linear_subsets

    model = tiny_model("llama")
    block = decoder_blocks(model)[0]
    inputs = capture_block_inputs(model, tokens(2, 8))
    subsets = linear_subsets(block, inputs, block_linears(block))
    assert subsets == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                       ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_true_sequential_prunes_every_layer_validly_and_differs_from_one_pass(method):
    ids = tokens(8, 16)
    dense = tiny_model("llama")
    masks = {}
    for flag in (False, True):
        model = copy.deepcopy(dense)
        L.prune_(model, L.PruneConfig(method=method, pattern="2:4", calib_windows=8, calib_seq_len=16,
                                      true_sequential=flag), ids, progress=False)
        layers = sparse_layers(model)
        assert len(layers) == 14 and all(is_nm(layer.mask(), 2, 4) for layer in layers.values())
        masks[flag] = {n: layer.mask() for n, layer in layers.items()}
    # the first subset sees the same inputs either way; a later one sees inputs of pruned q/k/v
    first = "model.layers.0.self_attn.q_proj"
    assert torch.equal(masks[False][first], masks[True][first])
    assert any(not torch.equal(masks[False][n], masks[True][n]) for n in masks[False])
    with pytest.raises(ValueError, match="true_sequential"):
        L.PruneConfig(true_sequential=1)


def test_non_sequential_wanda_uses_the_dense_models_statistics():
    from llmlite_kernels.calibration import LinearInputStats
    from llmlite_kernels.prune.masks import select_mask
    from llmlite_kernels.prune.wanda import wanda_scores

    ids = tokens(8, 16)
    dense = tiny_model("llama")
    targets = {n: m for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    with LinearInputStats(targets) as stats, torch.no_grad():
        dense(ids)
    expected = {n: select_mask(wanda_scores(m.weight, stats.column_norms(n)), 0.5, (2, 4)) for n, m in targets.items()}
    masks = {}
    for flag in (True, False):
        model = copy.deepcopy(dense)
        L.prune_(model, L.PruneConfig(method="wanda", pattern="2:4", calib_windows=8, calib_seq_len=16,
                                      sequential=flag), ids, progress=False)
        masks[flag] = {n: layer.mask() for n, layer in sparse_layers(model).items()}
    assert all(torch.equal(masks[False][n], expected[n]) for n in expected)
    assert any(not torch.equal(masks[True][n], expected[n]) for n in expected)  # later blocks: pruned inputs
    with pytest.raises(ValueError, match="sequential=False"):
        L.PruneConfig(method="sparsegpt_recon", pattern="2:4", sequential=False)


def test_calibration_defaults_per_method():
    wanda, sparsegpt = L.PruneConfig(method="wanda"), L.PruneConfig(method="sparsegpt")
    assert (wanda.calib_windows, wanda.calib_sampling) == (128, "random")
    assert (sparsegpt.calib_windows, sparsegpt.calib_sampling) == (64, "first")
    given = L.PruneConfig(method="wanda", calib_windows=8, calib_sampling="first")
    assert (given.calib_windows, given.calib_sampling) == (8, "first")
