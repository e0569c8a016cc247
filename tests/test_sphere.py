"""The sphere task: lat-lon grids on the unit sphere, area-weighted loss and PSNR, climate maps,
.npy / NetCDF files, the CLI, and a meta-learned init beating a random one."""
import json
import math

import numpy as np
import pytest
import torch

from metainr import Siren, TrainConfig, build_learner, fit, mean_psnr, meta_train
from metainr.data.climate import climate_maps, load_climate
from metainr.errors import MetaINRError
from metainr.functional import field_function
from metainr.tasks import build_task
from metainr.tasks.sphere import SphereTask, area_weights, sphere_points


def _field(seed=0, width=32):
    return Siren(in_dim=3, out_dim=1, width=width, depth=3, w0=10.0, w0_first=10.0, seed=seed)


def _maps(count=2, h=16, w=32, seed=0):
    return climate_maps(count, h, w, seed=seed)


# -- the grid ---------------------------------------------------------------------------------------
def test_points_are_unit_vectors_row_major_from_the_north_pole():
    h, w = 7, 12
    pts = sphere_points(h, w, dtype=torch.float64)
    assert pts.shape == (h * w, 3)
    torch.testing.assert_close(pts.norm(dim=1), torch.ones(h * w, dtype=torch.float64))
    grid = pts.reshape(h, w, 3)
    torch.testing.assert_close(grid[0, :, 2], torch.ones(w, dtype=torch.float64))  # row 0: north pole
    torch.testing.assert_close(grid[-1, :, 2], -torch.ones(w, dtype=torch.float64))
    lat = math.radians(90 - 2 * 180 / (h - 1))  # row 2, column 3: lon = 90 degrees
    torch.testing.assert_close(grid[2, 3], torch.tensor([0.0, math.cos(lat), math.sin(lat)], dtype=torch.float64))


def test_area_weights_sum_to_the_sphere_area():
    total = float(area_weights(721, 1440, dtype=torch.float64).sum())
    assert abs(total - 4 * math.pi) < 0.01 * 4 * math.pi


def test_loss_through_observe_is_the_area_weighted_mse():
    task = SphereTask()
    truth, pred = _maps(2, 9, 16, seed=0).double(), _maps(2, 9, 16, seed=5).double()
    batch = task.batch(truth)
    field = lambda p, x: pred[0].reshape(-1, 1)  # noqa: E731  a field whose values are pred[0]
    loss = task.loss(task.observe(field, {}, batch.query), batch.values[0])
    lat = torch.linspace(90, -90, 9, dtype=torch.float64).deg2rad()
    w = lat.cos()[:, None].expand(9, 16)
    explicit = (w * (pred[0] - truth[0]) ** 2).mean() * math.pi / 2
    torch.testing.assert_close(loss, explicit)


def test_observe_works_under_vmap_on_the_inputs_dtype():
    task = SphereTask()
    batch = task.batch(_maps(3, 8, 10).double())
    field = _field()
    fn = field_function(field)
    params = {k: v.detach().double()[None].expand(3, *v.shape) for k, v in field.named_parameters()}
    out = torch.vmap(lambda p: task.observe(fn, p, batch.query))(params)
    assert out.shape == (3, 80, 1) and out.dtype == torch.float64
    assert float(out.reshape(3, 8, 10)[:, 0].abs().max()) < 1e-6  # the pole rows weigh (almost) nothing


def test_weighted_psnr_matches_numpy():
    task = SphereTask()
    truth, pred = _maps(2, 9, 16, seed=0), _maps(2, 9, 16, seed=4)
    batch = task.batch(truth)
    flat = pred.reshape(2, -1, 1)
    psnr = task.metrics(lambda p, x: p["v"], {"v": flat}, batch)["psnr"]
    lat = np.radians(90 - np.arange(9) * 180 / 8)
    w = np.repeat(np.cos(lat)[:, None], 16, axis=1).clip(0)
    err = (w * (pred.numpy() - truth.numpy()) ** 2).sum(axis=(1, 2)) / w.sum()
    np.testing.assert_allclose(psnr.numpy(), -10 * np.log10(err), rtol=1e-4)
    assert task.metrics(lambda p, x: p["v"], {"v": flat}, batch, ("ssim",)) == {}


# -- data --------------------------------------------------------------------------------------------
def test_climate_maps_are_deterministic_seamless_and_in_range():
    a, b = climate_maps(4, 20, 40, seed=3), climate_maps(4, 20, 40, seed=3)
    assert a.shape == (4, 20, 40) and torch.equal(a, b)
    assert float(a.min()) >= 0.05 - 1e-6 and float(a.max()) <= 0.95 + 1e-6 and float(a.std()) > 0.05
    assert not torch.equal(a, climate_maps(4, 20, 40, seed=4))
    torch.testing.assert_close(a[:, 0], a[:, 0, :1].expand(4, 40), atol=1e-5, rtol=0)  # one value at a pole
    seam = (a[..., 0] - a[..., -1]).abs().mean()  # no seam at lon 0/360: like any neighbouring columns
    assert seam < 2 * (a[..., 1:] - a[..., :-1]).abs().mean()
    assert load_climate("climate", "val", 16, 32, val_count=3).shape == (3, 16, 32)


def test_tokens_are_padded_lat_lon_patches():
    task = SphereTask()
    maps = torch.arange(2 * 46 * 90, dtype=torch.float32).reshape(2, 46, 90)
    tok = task.tokens(task.batch(maps))
    assert tok.shape == (2, 8 * 8, 6 * 12)  # ph, pw = 6, 12; padded to 48 x 96
    torch.testing.assert_close(tok[1, 0].reshape(6, 12), maps[1, :6, :12])
    torch.testing.assert_close(tok[0, -1].reshape(6, 12)[:4, :6], maps[0, 42:, 84:])
    torch.testing.assert_close(tok[0, -1].reshape(6, 12)[5, 11], maps[0, -1, -1])  # edge-replicated


def test_npy_round_trip_is_exact(tmp_path):
    task = SphereTask(vmin=0.0, vmax=1.0)
    grid = _maps(1, 12, 24)[0][..., None]
    written = task.write(tmp_path / "map.png", grid)
    assert [p.name for p in written] == ["map.png", "map.npy"] and all(p.is_file() for p in written)
    batch = task.read(tmp_path / "map.npy")
    assert torch.equal(batch.reference[0], grid)
    assert task.settled(batch).config.height == 12 and task.settled(batch).config.width == 24


def test_netcdf_round_trip_flips_ascending_latitudes(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    h, w = 9, 16
    kelvin = 250 + 40 * _maps(2, h, w).double().numpy()
    lat = np.linspace(-90, 90, h)  # ascending: south first
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), kelvin[:, ::-1]), "other": (("time",), np.zeros(2))},
                    coords={"time": [0, 1], "lat": lat, "lon": np.arange(w) * 360.0 / w})
    ds.to_netcdf(tmp_path / "era5.nc")
    task = SphereTask(variable="t2m", vmin=250.0, vmax=290.0)
    batch = task.read(tmp_path / "era5.nc")
    np.testing.assert_allclose(batch.reference[0, ..., 0].numpy(), (kelvin[0] - 250) / 40, atol=1e-6)
    auto = SphereTask().read(tmp_path / "era5.nc")  # the only variable on lat/lon, its own range
    assert auto.reference.shape == (1, h, w, 1) and float(auto.reference.max()) == 1.0
    with pytest.raises(MetaINRError, match="no variable 'z500'") as err:
        SphereTask(variable="z500").read(tmp_path / "era5.nc")
    assert "\n" not in str(err.value) and "era5.nc" in str(err.value)


@pytest.mark.parametrize("make, match", [
    (lambda p: np.save(p, np.zeros((2, 3, 4))), "2-D"),
    (lambda p: p.write_text("not an array"), "cannot read"),
    (lambda p: np.save(p, np.full((3, 4), np.nan)), "NaN"),
    (lambda p: np.save(p, np.zeros((3, 4), dtype=bool)), "bool"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, make, match):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(MetaINRError, match=match) as err:
        SphereTask().read(path)
    assert "\n" not in str(err.value) and "bad.npy" in str(err.value)


def test_a_folder_of_grids_of_two_sizes_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 8)))
    np.save(tmp_path / "b.npy", np.zeros((5, 8)))
    with pytest.raises(MetaINRError, match="b.npy is 5x8"):
        SphereTask().load(str(tmp_path), "test")


def test_spec_round_trip():
    task = build_task("sphere", height=16, width=32, variable="t2m")
    assert isinstance(task, SphereTask) and build_task(task.spec()).config == task.config


# -- the CLI and behaviour -----------------------------------------------------------------------------
def test_cli_fits_a_map_and_writes_png_and_npy(cli, tmp_path):
    np.save(tmp_path / "map.npy", 250 + 40 * _maps(1, 12, 24)[0].numpy())
    code, out, err = cli("fit", tmp_path / "map.npy", "--init", "random", "--task", "sphere", "--steps", "20",
                         "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["task"] == "sphere"
    assert (tmp_path / "map.recon.png").is_file() and np.load(tmp_path / "map.recon.npy").shape == (12, 24)


def test_learned_init_beats_random_after_two_steps():
    task = SphereTask(height=16, width=32)
    test = task.batch(climate_maps(16, 16, 32, seed=3))
    field = _field(1)
    random = max(mean_psnr(fit(task, field, dict(field.named_parameters()), test, 2, lr=lr).psnr[:, -1])
                 for lr in (1e-3, 3e-3, 1e-2, 3e-2))
    learner = build_learner(_field(), "maml")
    meta_train(learner, task, climate_maps(200, 16, 32, seed=1), TrainConfig(steps=100, batch_size=8, outer_lr=3e-3),
               progress=False)
    result = fit(task, learner.field, learner.signal_init(task, test), test, 2,
                 **learner.test_rule().fit_options(task, learner.field))
    meta = mean_psnr(result.psnr[:, -1])
    # measured (1 thread, 100 outer steps at 3e-3, 16x32 maps): maml 25.9 dB after 2 steps vs the best
    # Adam lr of a random init 19.6 dB (lr 1e-2): a margin of 6.3 dB; about half is asserted
    assert meta > random + 3.0, (meta, random)


def test_transinr_meta_gradient_runs_on_sphere_tokens():
    task = SphereTask()
    batch = task.batch(_maps(2, 10, 20))
    tokens = task.tokens(batch)
    assert tokens.shape == (2, 5 * 7, 2 * 3)  # ph, pw = 2, 3: 10 x 21 padded
    learner = build_learner(_field(width=16), "transinr", tokens=tokens.shape[1], token_dim=tokens.shape[2],
                            hyper_dim=16, hyper_depth=1, hyper_heads=2, n_groups=4)
    stats, grads = learner.meta_gradient(task, batch)
    assert math.isfinite(float(stats["loss"])) and all(torch.isfinite(g).all() for g in grads.values())


def test_a_fit_stays_on_the_inputs_device():
    task = SphereTask()
    batch = task.batch(torch.zeros(2, 6, 8, device="meta"))
    assert batch.query.device.type == "meta" and batch.values.device.type == "meta"
    field = _field(width=8).to("meta")
    init = {k: v.detach()[None].expand(2, *v.shape) for k, v in field.named_parameters()}
    result = fit(task, field, init, batch, 1)
    assert result.psnr.device.type == "meta" and all(p.device.type == "meta" for p in result.params.values())


def test_every_time_step_of_a_netcdf_file_is_a_signal(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("netCDF4")
    h, w, steps = 9, 16, 12
    maps = _maps(steps, h, w).double().numpy()
    ds = xr.Dataset({"t2m": (("time", "level", "lat", "lon"), np.stack([maps, 1 - maps], axis=1))},
                    coords={"time": np.arange(steps), "level": [1000, 500], "lat": np.linspace(90, -90, h),
                            "lon": np.arange(w) * 360.0 / w})
    ds.to_netcdf(tmp_path / "era5.nc")
    task = SphereTask(variable="t2m", vmin=0.0, vmax=1.0)
    train, val, test = (task.load(str(tmp_path / "era5.nc"), s) for s in ("train", "val", "test"))
    # 12 steps: train the first 11, validate on the last, test on all; level 0 of each step
    assert (len(train), len(val), len(test)) == (11, 1, 12)
    np.testing.assert_allclose(test.numpy(), maps, atol=1e-6)
    np.testing.assert_allclose(val[0].numpy(), maps[-1], atol=1e-6)
    # a fit reads one map: the first step
    np.testing.assert_allclose(task.read(tmp_path / "era5.nc").reference[0, ..., 0].numpy(), maps[0], atol=1e-6)
