"""2D signed distance fields: distances against analytic ones, the value convention, masks in and
PNGs out, one-line errors, tokens, and a learned init that beats a random one."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from metainr import FieldConfig, TrainConfig, build_field, build_learner, fit, mean_psnr, meta_train
from metainr.data.glyphs import downsample, fine_side, mask_to_sdf, read_mask, shapes
from metainr.tasks import SDF2DTask, build_task
from metainr.tasks.distance import inside_iou, sdf_to_values, values_to_sdf


def _disc(side, radius):
    axis = np.linspace(-1, 1, side)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return np.hypot(x, y), np.hypot(x, y) < radius


def test_mask_distances_match_a_disc_within_a_pixel():
    side, radius = 257, 0.5
    r, mask = _disc(side, radius)
    spacing = 2 / (side - 1)
    err = np.abs(mask_to_sdf(mask) - (r - radius))
    # the mask's boundary is a staircase of pixel centres: measured 0.50 pixel at worst, 0.32 on average
    assert err.max() < 0.6 * spacing and err.mean() < 0.4 * spacing, (err.max() / spacing, err.mean() / spacing)


def test_fine_grid_subsamples_onto_the_output_pixel_centres():
    res = 9
    fine = np.linspace(-1, 1, fine_side(res))
    np.testing.assert_allclose(downsample(np.tile(fine, (fine.size, 1)))[0], np.linspace(-1, 1, res), atol=1e-12)


def test_value_convention_round_trips_inside_the_band():
    d = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0])
    v = sdf_to_values(d, 1.0)
    torch.testing.assert_close(v, torch.tensor([0.0, 0.25, 0.5, 0.625, 1.0]))
    torch.testing.assert_close(values_to_sdf(v[1:4], 1.0), d[1:4])


def test_iou_of_inside_regions():
    a = torch.tensor([[0.2, 0.2, 0.8, 0.8]])
    b = torch.tensor([[0.2, 0.8, 0.2, 0.8]])
    assert float(inside_iou(a, b)) == pytest.approx(1 / 3)
    assert float(inside_iou(torch.ones(1, 4), torch.ones(1, 4))) == 1.0  # both empty


def test_bundled_classes_are_deterministic_and_split_by_font():
    a, b = shapes("glyphs", "train", 16, 4), shapes("glyphs", "train", 16, 4)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, shapes("glyphs", "test", 16, 4))
    for source in ("glyphs", "primitives"):
        sdf = shapes(source, "val", 16, 6)
        assert sdf.shape == (6, 16, 16) and bool((sdf < 0).any(dim=(1, 2)).all())


def test_mask_file_round_trip_and_written_outputs(tmp_path):
    _, mask = _disc(64, 0.6)
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "disc.png")
    task = build_task("sdf2d", resolution=32)
    batch = task.read(tmp_path / "disc.png")
    assert batch.values.shape == (1, 32 * 32, 1)
    # every pixel within about a pixel of the 64-px mask (2/63 ~ 0.03 in distance, 0.016 in value)
    r, _ = _disc(32, 0.6)
    expected = sdf_to_values(torch.from_numpy(r - 0.6).float(), 1.0)
    assert float((batch.reference[0, ..., 0] - expected).abs().max()) < 0.025
    paths = task.write(tmp_path / "out.png", batch.reference[0])
    assert [p.name for p in paths] == ["out.png", "out.level.png"]
    back = np.asarray(Image.open(paths[0])) / 255.0
    np.testing.assert_allclose(back, batch.reference[0, ..., 0].numpy(), atol=0.5 / 255 + 1e-6)
    outline = np.asarray(Image.open(paths[1]))
    assert outline.shape == (128, 128) and (outline == 0).any() and (outline == 200).any()


@pytest.mark.parametrize("content, fragment", [(b"", "cannot"), (b"not a png", "cannot")])
def test_bad_mask_files_are_one_line_errors(tmp_path, cli, content, fragment):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    code, out, err = cli("fit", bad, "--init", "random", "--task", "sdf2d", "--steps", "1")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_mask_without_a_boundary_is_refused(tmp_path):
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "full.png")
    from metainr import MetaINRError

    with pytest.raises(MetaINRError, match="no boundary"):
        read_mask(tmp_path / "full.png", 16)


def test_cli_fit_writes_the_image_and_its_level_set(tmp_path, cli):
    _, mask = _disc(40, 0.5)
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "m.png")
    code, out, err = cli("fit", tmp_path / "m.png", "--init", "random", "--task", "sdf2d", "--steps", "30", "--json",
                         "--resolution", "16", "--record", "0")
    assert code == 0, err
    report = json.loads(out)
    assert report["final_psnr"] > report["psnr"][0]
    assert (tmp_path / "m.recon.png").is_file() and (tmp_path / "m.recon.level.png").is_file()


def test_tokens_are_patches_of_the_value_image():
    task = SDF2DTask(resolution=16)
    batch = task.batch(task.values(shapes("primitives", "test", 16, 2)))
    tokens = task.tokens(batch)
    assert tokens.shape == (2, 64, 4)
    torch.testing.assert_close(tokens[0, 0], batch.reference[0, :2, :2, 0].reshape(-1))


def test_learned_init_beats_random_after_two_steps():
    task = SDF2DTask(resolution=16, count=200, val_count=8)
    train, test = task.load("glyphs", "train"), task.batch(task.load("glyphs", "test"))
    cfg = FieldConfig(kind="siren", in_dim=2, out_dim=1, width=32, depth=3, w0=30.0, w0_first=30.0,
                      output_offset=0.5)
    field = build_field(cfg)
    random = max(mean_psnr(fit(task, field, dict(field.named_parameters()), test, 2, lr=lr).psnr[:, -1])
                 for lr in (1e-3, 3e-3, 1e-2))
    learner = build_learner(build_field(cfg), "maml", inner_steps=2, inner_lr=1e-2)
    meta_train(learner, task, train, TrainConfig(steps=200, batch_size=8, outer_lr=3e-3), progress=False)
    result = fit(task, learner.field, learner.signal_init(task, test), test, 2, metrics=("psnr", "iou"),
                 **learner.test_rule().fit_options(task, learner.field))
    meta = mean_psnr(result.psnr[:, -1])
    # measured here (1 thread, 200 outer steps, 15 s): random 18.6 dB, meta 28.3 dB after 2 steps (+9.7)
    assert meta > random + 5.0, (meta, random)
