"""``metainr render`` and the views task's turntable: cameras that look at the object, a PNG strip
of N views and an N-frame GIF, from a checkpoint or a fitted field; tasks without cameras refuse."""
import numpy as np
import pytest
import torch
from PIL import Image

from metainr.tasks import ViewsTask


def sphere(params, x):
    """A dark ball of radius 0.5 at the origin: raw (density, rgb) per point."""
    inside = (x.norm(dim=-1, keepdim=True) < 0.5).to(x.dtype)
    return torch.cat([inside * 50.0 - 10.0, torch.full_like(x, -10.0)], dim=-1) + 0 * params["w"]


def test_turntable_cameras_circle_the_origin():
    task = ViewsTask(resolution=16, n_samples=64, near=2.8, far=5.2)
    views = task.render(sphere, {"w": torch.zeros(())}, 5)
    assert views.shape == (5, 16, 16, 3)
    centre, corner = views[:, 7:9, 7:9].mean(dim=(1, 2, 3)), views[:, 0, 0].mean(dim=-1)
    assert torch.all(centre < 0.05) and torch.all(corner > 0.99)  # the ball in the middle of every view
    # the ball's apparent radius: 0.5 at distance 4 through NeRF-synthetic's field of view (0.691 rad)
    dark = (views.mean(dim=-1) < 0.5).sum(dim=(1, 2)).float()
    focal = 0.5 * 16 / np.tan(0.5 * 0.6911112070083618)
    radius_px = focal * np.tan(np.arcsin(0.5 / 4.0))
    assert torch.allclose(dark, torch.full_like(dark, np.pi * radius_px ** 2), rtol=0.35)


def test_render_writes_a_strip_and_a_gif_and_refuses_tasks_without_cameras(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("meta-train", "--task", "views", "--resolution", "8", "--count", "4", "--val-count", "2",
                       "--views", "3", "--steps", "2", "--rays", "16", "--n-samples", "4", "--width", "16",
                       "--run", run)
    assert code == 0, err
    code, _, err = cli("render", run / "checkpoint.safetensors", "--views", "5", "--out", tmp_path / "t.png")
    assert code == 0, err
    assert Image.open(tmp_path / "t.png").size == (5 * 8, 8)
    with Image.open(tmp_path / "t.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (8, 8)
    code, _, err = cli("render", run / "checkpoint.safetensors", "--out", run / "checkpoint.safetensors")
    assert code == 1 and "input" in err
    code, _, err = cli("meta-train", "--data", "faces", "--resolution", "8", "--width", "8", "--depth", "3",
                       "--steps", "1", "--run", tmp_path / "img")
    assert code == 0, err
    code, _, err = cli("render", tmp_path / "img" / "checkpoint.safetensors", "--out", tmp_path / "i.png")
    assert code == 1 and err.strip().startswith("metainr: error:") and "no cameras" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("views", [0, -1])
def test_turntable_needs_a_view(views):
    with pytest.raises(ValueError):
        ViewsTask(resolution=8).render(sphere, {"w": torch.zeros(())}, views)
