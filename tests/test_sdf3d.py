"""The sdf3d task: analytic SDFs against trimesh, surfaces, samples, files, the CLI, meta-learning."""
import json

import numpy as np
import pytest
import torch

from metainr import Siren, TrainConfig, build_learner, fit, mean_psnr, meta_train
from metainr.data.solids import Primitive, Solid, mesh_sdf, primitive_sdf, solid_shape
from metainr.errors import MetaINRError
from metainr.data.surfaces import chamfer_distance, grid_surface, surface_points
from metainr.tasks.distance import sdf_to_values
from metainr.data.images import grid_coords
from metainr.tasks.sdf3d import SDF3DTask, draw_samples

trimesh = pytest.importorskip("trimesh")
EYE = tuple(map(tuple, np.eye(3).tolist()))


def _points(n=500, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 3)))


def test_analytic_sdfs_match_trimesh_signed_distances():
    p = _points()
    # icosphere(4) has 5120 flat faces; its vertices lie on the sphere and its faces at most
    # r (1 - cos(edge angle / 2)) ~ 1e-3 r inside it, so the distances agree to 2e-3 for r = 0.6
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    ours = primitive_sdf("sphere", (0.6,), p).numpy()
    np.testing.assert_allclose(ours, -trimesh.proximity.signed_distance(sphere, p.numpy()), atol=2e-3)
    # a box mesh is exact: float round-off only
    box = trimesh.creation.box(extents=(0.8, 0.6, 1.0))
    ours = primitive_sdf("box", (0.4, 0.3, 0.5), p).numpy()
    np.testing.assert_allclose(ours, -trimesh.proximity.signed_distance(box, p.numpy()), atol=1e-6)
    # our mesh SDF (lattice candidates + winding numbers) agrees with the analytic box too
    np.testing.assert_allclose(mesh_sdf(np.asarray(box.vertices), np.asarray(box.faces), p).numpy(), ours, atol=1e-6)


def test_marching_cubes_sphere_radius_and_chamfer_of_concentric_spheres():
    g, r = 32, 0.6
    coords = grid_coords(g, g, g, dtype=torch.float64)
    verts, faces = grid_surface(sdf_to_values(coords.norm(dim=-1) - r, 1.0).reshape(g, g, g).numpy())
    radii = np.linalg.norm(verts, axis=1)
    assert np.abs(radii - r).max() < 0.1 * 2 / (g - 1)  # within a tenth of a cell
    ico = trimesh.creation.icosphere(4, radius=0.5)
    a = surface_points(np.asarray(ico.vertices), np.asarray(ico.faces), 5000)
    b = a * (0.6 / 0.5)  # a concentric sphere of radius 0.6: every nearest neighbour is ~0.1 away
    assert chamfer_distance(a, b) == pytest.approx(0.1, abs=3e-3)


def test_mesh_round_trip_ply_and_obj(tmp_path):
    task = SDF3DTask(grid=16)
    coords = grid_coords(16, 16, 16)
    grid = sdf_to_values(coords.norm(dim=-1) - 0.5, 1.0).reshape(16, 16, 16)
    verts, faces = grid_surface(grid.numpy())
    for name in ("out.ply", "out.obj"):
        written = task.write(tmp_path / name, grid)
        assert written == [tmp_path / name]
        mesh = trimesh.load(tmp_path / name, force="mesh", process=False)
        assert mesh.vertices.shape == verts.shape and mesh.faces.shape == faces.shape
        assert mesh.volume > 0  # faces point outwards
    assert task.output_paths(tmp_path / "x.recon.png") == [tmp_path / "x.recon.ply"]
    with pytest.raises(MetaINRError, match="no surface"):
        task.write(tmp_path / "empty.ply", torch.ones(16, 16, 16))


@pytest.mark.parametrize("content", [b"", b"this is not \x00 a mesh\nf 1 2 9\n",
                                     b"v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n"])
def test_bad_mesh_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "bad.obj"
    path.write_bytes(content)
    with pytest.raises(MetaINRError) as err:
        SDF3DTask(samples=64, grid=8).read(path)
    assert "\n" not in str(err.value) and "bad.obj" in str(err.value)


def test_samples_are_near_the_surface_in_range_and_seeded():
    solid = Solid((Primitive("sphere", (0.5,), EYE, (0.0, 0.0, 0.0)),))
    shape = solid_shape(solid, 2048, seed=0)
    p = draw_samples(shape, 4000, 3)
    d = solid.sdf(p)
    assert 0.7 < float((d.abs() < 0.1).double().mean()) <= 0.85  # 80 % near + the uniform ones that fall near
    assert float((p.norm(dim=-1) > 0.9).double().mean()) > 0.05  # the uniform 20 % reach the corners
    values = sdf_to_values(d, 1.0)
    assert values.min() >= 0 and values.max() <= 1
    torch.testing.assert_close(draw_samples(shape, 4000, 3), p)
    assert not torch.equal(draw_samples(shape, 4000, 4), p)
    task = SDF3DTask(samples=256, grid=8, count=3, val_count=2)
    torch.testing.assert_close(task.load("shapes", "val").points, task.load("shapes", "val").points)


def test_cli_fit_writes_a_mesh_and_render_writes_a_strip(cli, tmp_path):
    shape = tmp_path / "shape.obj"
    trimesh.creation.icosphere(subdivisions=2, radius=1.0).export(shape)
    code, out, err = cli("fit", shape, "--init", "random", "--task", "sdf3d", "--steps", "5", "--json", "--samples",
                         "512", "--grid", "16", "--save-field", tmp_path / "f.safetensors")
    assert code == 0, err
    report = json.loads(out)
    assert report["outputs"] == [str(tmp_path / "shape.recon.ply")] and (tmp_path / "shape.recon.ply").is_file()
    code, out, err = cli("render", tmp_path / "f.safetensors", "--views", "2", "--resolution", "16")
    assert code == 0, err
    from PIL import Image

    assert Image.open(tmp_path / "f.turntable.png").size == (32, 16)
    code, _, err = cli("fit", tmp_path / "missing.obj", "--init", "random", "--task", "sdf3d", "--steps", "1")
    assert code != 0 and "missing.obj" in err and len(err.strip().splitlines()) == 1


def test_meta_learned_init_beats_random_after_two_steps():
    # measured here (1 thread, 60 outer steps of MAML at 3e-3, 8 shapes a step): after 2 test steps
    # on 8 held-out shapes, 27.2 dB vs 20.0 dB for the best Adam lr of a random init (7.2 dB margin);
    # the asserted margin is about half
    task = SDF3DTask(samples=1024, grid=16, count=64, val_count=8)
    train, test = task.load("shapes", "train"), task.batch(task.load("shapes", "test"))
    field = Siren(in_dim=3, out_dim=1, width=32, depth=3, w0=15.0, w0_first=15.0, output_offset=0.5, seed=1)
    random = max(mean_psnr(fit(task, field, dict(field.named_parameters()), test, 2, lr=lr).psnr[:, -1])
                 for lr in (1e-3, 3e-3, 1e-2, 3e-2))
    learner = build_learner(Siren(in_dim=3, out_dim=1, width=32, depth=3, w0=15.0, w0_first=15.0,
                                  output_offset=0.5), "maml")
    meta_train(learner, task, train, TrainConfig(steps=60, batch_size=8, outer_lr=3e-3), progress=False)
    result = fit(task, learner.field, learner.signal_init(task, test), test, 2,
                 **learner.test_rule().fit_options(task, learner.field))
    meta = mean_psnr(result.psnr[:, -1])
    assert meta > random + 3.5, (meta, random)


def test_a_mesh_file_over_the_byte_limit_is_refused_before_parsing(tmp_path, monkeypatch):
    import metainr.data.solids as solids
    from metainr import MetaINRError

    path = tmp_path / "big.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    monkeypatch.setattr(solids, "MAX_MESH_BYTES", 16)
    monkeypatch.setattr(solids, "_trimesh", lambda: pytest.fail("the file was parsed"))
    with pytest.raises(MetaINRError, match="big.obj has 32 bytes") as err:
        solids.load_mesh_file(path)
    assert "\n" not in str(err.value)
