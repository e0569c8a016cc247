import math

import pytest
import torch

from metainr import FieldConfig, FourierMLP, PositionalMLP, Siren, build_field, count_parameters
from metainr.fields import Linear, RWF


def test_siren_shapes_and_features():
    field = Siren(in_dim=2, out_dim=3, width=16, depth=4)
    coords = torch.rand(10, 2) * 2 - 1
    assert field(coords).shape == (10, 3)
    assert field.features(coords).shape == (10, 16)
    # head(features) + offset is the output: the hook GradNCP-style methods rely on
    torch.testing.assert_close(field.head(field.features(coords)) + 0.5, field(coords))


def test_siren_init_follows_sitzmann_bounds():
    w0 = 30.0
    field = Siren(width=64, depth=4, w0=w0)
    assert field.hidden[0].weight.abs().max() <= 1.0 / 2
    for layer in list(field.hidden)[1:] + [field.head]:
        bound = math.sqrt(6.0 / layer.in_dim) / w0
        assert layer.weight.abs().max() <= bound
        # uniform on [-b, b]: the std is b / sqrt(3)
        assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_rwf_is_the_same_function_at_init_and_trains_s_and_v():
    coords = torch.rand(32, 2) * 2 - 1
    plain = Siren(width=16, depth=3, seed=7)
    factored = Siren(width=16, depth=3, seed=7, rwf=True)
    torch.testing.assert_close(factored(coords), plain(coords), rtol=1e-5, atol=1e-6)
    names = {n for n, _ in factored.named_parameters()}
    assert "hidden.0.s" in names and "hidden.0.v" in names and "hidden.0.weight" not in names


def test_rwf_linear_scales_rows():
    layer = Linear(3, 4, rwf=RWF(mu=1.0, sigma=0.1))
    expected = torch.exp(layer.s) * layer.v
    torch.testing.assert_close(layer.effective_weight(), expected)
    assert layer.s.shape == (4, 1)
    assert abs(layer.s.mean().item() - 1.0) < 0.3


@pytest.mark.parametrize("cls", [FourierMLP, PositionalMLP])
def test_encoded_mlps(cls):
    field = cls(in_dim=3, out_dim=2, width=8, depth=3)
    coords = torch.rand(5, 3) * 2 - 1
    assert field(coords).shape == (5, 2)
    assert field.features(coords).shape == (5, 8)


def test_positional_encoding_values():
    field = PositionalMLP(in_dim=1, out_dim=1, width=4, depth=2, n_freqs=3)
    x = torch.tensor([[0.25]])
    enc = field.encode(x)[0]
    expected = [0.25] + [math.sin(2**i * math.pi * 0.25) for i in range(3)] + [math.cos(2**i * math.pi * 0.25)
                                                                                for i in range(3)]
    torch.testing.assert_close(enc, torch.tensor(expected))


def test_build_field_registry_and_errors():
    assert isinstance(build_field(FieldConfig(kind="fourier", width=8)), FourierMLP)
    with pytest.raises(ValueError, match="unknown field kind"):
        build_field(FieldConfig(kind="nope"))
    with pytest.raises(ValueError, match="depth >= 2"):
        Siren(depth=1)
    assert count_parameters(Siren(in_dim=2, out_dim=3, width=4, depth=2)) == (2 * 4 + 4) + (4 * 3 + 3)
