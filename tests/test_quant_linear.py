"""QuantLinear as a drop-in nn.Linear."""
import pytest
import torch

import llmlite_kernels as L

from conftest import assert_close_rel


@pytest.mark.parametrize("bits, group_size, symmetric", [(4, 128, False), (8, -1, True), (3, 64, False), (2, 32, True)])
def test_forward_matches_dense_layer_with_dequantized_weight(bits, group_size, symmetric):
    linear = torch.nn.Linear(200, 72)
    q = L.QuantLinear.from_linear(linear, bits=bits, group_size=group_size, symmetric=symmetric)
    assert (q.in_features, q.out_features) == (200, 72)
    dense = torch.nn.Linear(200, 72)
    dense.weight.data, dense.bias.data = q.dequantize(), linear.bias.data
    x = torch.randn(2, 3, 200)
    assert_close_rel(q(x), dense(x), torch.float32)


def test_accepts_non_contiguous_input_like_linear():
    q = L.QuantLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32)
    x = torch.randn(64, 5).t()
    assert_close_rel(q(x), q(x.contiguous()), torch.float32)


def test_gradients_reach_input_and_bias_not_buffers():
    q = L.QuantLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32)
    x = torch.randn(3, 64, requires_grad=True)
    q(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.bias.grad is not None
    assert [n for n, p in q.named_parameters()] == ["bias"]
    assert all(not b.requires_grad for b in q.buffers())


def test_gpt2_conv1d_is_transposed():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(48, 64)  # nf=48 outputs, nx=64 inputs; weight [64, 48]
    torch.nn.init.normal_(conv.weight)
    q = L.QuantLinear.from_linear(conv, bits=8, group_size=32)
    assert (q.in_features, q.out_features) == (64, 48)
    x = torch.randn(4, 64)
    assert_close_rel(q(x), conv(x), tol=2e-2)


def test_wrong_input_features():
    q = L.QuantLinear.from_linear(torch.nn.Linear(64, 16), bits=4, group_size=32)
    with pytest.raises(ValueError, match="in_features=64"):
        q(torch.randn(3, 63))


def test_nan_weight_error_names_layer():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 8))
    model[1].weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="^1 contains NaN"):
        L.quantize_(model, L.QuantConfig(bits=4, group_size=32), progress=False)
