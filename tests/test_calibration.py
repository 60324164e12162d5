"""Calibration plumbing: windows, sequential block walking, input statistics."""
import pytest
import torch

from llmlite_kernels.calibration import (LinearInputStats, block_linears, calibration_windows, decoder_blocks,
                                         sequential_blocks)

from tiny_models import KINDS, tiny_model, tokens


def test_windows_from_tensor_and_bad_types():
    ids = torch.randint(0, 100, (5, 16))
    assert torch.equal(calibration_windows(ids, n_windows=3), ids[:3])
    with pytest.raises(ValueError, match="LongTensor"):
        calibration_windows(ids.float())
    with pytest.raises(TypeError, match="list of strings"):
        calibration_windows([1, 2], tokenizer=object())
    with pytest.raises(ValueError, match="tokenizer="):
        calibration_windows(["some text"])


def test_random_sampling_draws_distinct_windows_in_text_order():
    ids = torch.arange(200).reshape(50, 4)
    picked = calibration_windows(ids, n_windows=8, sampling="random", seed=3)
    starts = picked[:, 0]
    assert picked.shape == (8, 4) and len(set(starts.tolist())) == 8
    assert torch.equal(starts, starts.sort().values) and not torch.equal(picked, ids[:8])
    assert torch.equal(picked, calibration_windows(ids, n_windows=8, sampling="random", seed=3))
    assert not torch.equal(picked, calibration_windows(ids, n_windows=8, sampling="random", seed=4))
    assert torch.equal(calibration_windows(ids, n_windows=80, sampling="random"), ids)
    with pytest.raises(ValueError, match="sampling"):
        calibration_windows(ids, sampling="every")


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_blocks_reproduce_the_model(kind):
    """With no block changed, the last block's outputs equal the model's own last hidden state input."""
    model = tiny_model(kind)
    ids = tokens(3, 10)
    blocks = decoder_blocks(model)
    seen = []
    final = None
    for index, block, inputs in sequential_blocks(model, ids, batch_size=2, progress=False):
        seen.append(index)
        if index == len(blocks) - 1:
            final = torch.cat(inputs.run(block))
    assert seen == list(range(len(blocks)))
    with torch.no_grad():
        expected = model(ids, output_hidden_states=True).hidden_states
    # hidden_states[-1] has the final norm applied in most models; compare the block outputs before it
    captured = {}
    h = blocks[-1].register_forward_hook(lambda m, a, o: captured.setdefault("out", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(ids)
    h.remove()
    assert torch.allclose(final, captured["out"], atol=1e-5)
    assert len(expected) == len(blocks) + 1


def test_linear_input_stats_hessian():
    model = tiny_model("llama")
    ids = tokens(2, 8)
    for index, block, inputs in sequential_blocks(model, ids, progress=False):
        linears = block_linears(block, prefix=f"layers.{index}")
        with LinearInputStats(linears) as stats:
            inputs.run(block)
        name = f"layers.{index}.mlp.down_proj"
        xs = []
        h = linears[name].register_forward_hook(lambda m, a, o: xs.append(a[0].reshape(-1, a[0].shape[-1])))
        inputs.run(block)
        h.remove()
        x = torch.cat(xs)
        assert stats.count[name] == 16
        assert torch.allclose(stats.hessian(name), x.t() @ x / 16, rtol=1e-4, atol=1e-5)
        assert torch.allclose(stats.column_norms(name), x.norm(dim=0), rtol=1e-4)
        break
