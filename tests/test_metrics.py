import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metainr.metrics import mean_psnr, psnr, ssim


def test_psnr_is_per_signal_and_matches_skimage():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 20, 20, 3, generator=g)
    noise_levels = torch.tensor([0.01, 0.05, 0.2]).view(3, 1, 1, 1)
    pred = (target + noise_levels * torch.randn(3, 20, 20, 3, generator=g)).clamp(0, 1)
    ours = psnr(pred, target)
    assert ours.shape == (3,)
    for i in range(3):
        ref = peak_signal_noise_ratio(target[i].numpy(), pred[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-3)
    # batch-level PSNR is a different (wrong) number: the mean of per-signal values is not it
    batch_level = peak_signal_noise_ratio(target.numpy(), pred.numpy(), data_range=1.0)
    assert abs(ours.mean().item() - batch_level) > 1.0


def test_mean_psnr_caps_float_noise():
    assert mean_psnr(torch.tensor([30.0, float("inf")]), cap=60.0) == pytest.approx(45.0)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 32, 32, channels, generator=g)
    pred = (target + 0.1 * torch.randn(2, 32, 32, channels, generator=g)).clamp(0, 1)
    ours = ssim(pred, target)
    for i in range(2):
        ref = structural_similarity(target[i].numpy().astype(np.float64), pred[i].numpy().astype(np.float64),
                                    channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=1e-4)


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least"):
        ssim(torch.rand(1, 5, 5, 1), torch.rand(1, 5, 5, 1))


def test_ssim_in_bands_equals_ssim_at_once():
    """Large images are scored in bands of rows (bounded memory); the bands change nothing."""
    torch.manual_seed(1)
    a = torch.rand(2, 40, 31, 3)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    at_once = ssim(a.double(), b.double(), band_values=1 << 30)
    for band_values in (1, 2000, 7000):
        assert torch.allclose(ssim(a.double(), b.double(), band_values=band_values), at_once, rtol=0, atol=1e-12)
