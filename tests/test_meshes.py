"""Real meshes for the views task: the OBJ reader, the mesh ray caster cross-checked against the
independent box caster, and the random_urdfs dataset on tiny fake objects (and on pybullet's own
when it is installed)."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from metainr.data import meshes
from metainr.data.box_objects import OBJECT_RADIUS, BoxObject, render_views
from metainr.data.cameras import orbit_cameras
from metainr.data.meshes import MeshObject, cast_mesh, mesh_objects, read_obj, render_mesh_views
from metainr.errors import MetaINRError
from metainr.tasks import ViewsTask

HAS_PYBULLET = importlib.util.find_spec("pybullet_data") is not None
LO, HI = (-0.4, -0.3, -0.5), (0.45, 0.3, 0.55)


def _cube_obj(lo=LO, hi=HI):
    """A box as an OBJ of 8 vertices and 6 quads (outward-wound), vertex k = corner (k>>2, k>>1, k) & 1."""
    corners = [[(lo, hi)[(k >> s) & 1][a] for a, s in ((0, 2), (1, 1), (2, 0))] for k in range(8)]
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    return "o cube\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in corners) + \
        "".join("f " + " ".join(str(i + 1) for i in q) + "\n" for q in quads)


def _write_object(root, number, obj_text, rgba="1 0 0 1"):
    folder = root / f"{number:03d}"
    folder.mkdir(parents=True)
    (folder / f"{number:03d}.obj").write_text(obj_text)
    if rgba is not None:
        (folder / f"{number:03d}.urdf").write_text(
            f'<robot name="blob"><link name="l"><visual><geometry><mesh filename="{number:03d}.obj" '
            f'scale="0.015 0.015 0.015"/></geometry><material name="m"><color rgba="{rgba}"/></material>'
            '</visual></link></robot>')


def _fake_root(tmp_path):
    root = tmp_path / "random_urdfs"
    _write_object(root, 0, _cube_obj())
    _write_object(root, 1, _cube_obj((-1, -2, -1), (3, 2, 1)), rgba=None)  # no urdf: grey
    _write_object(root, 850, "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    return root


# -- the OBJ reader -------------------------------------------------------------------------------------
def test_quads_become_fans_and_every_index_form_reads(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("# a quad\no q\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0 1.0\nvn 0 0 1\nvt 0 0\n"
                    "f 1/1/1 2/1/1 3//1 4\nf -4 -2 -1\n")
    v, f = read_obj(path)
    assert v.dtype == np.float64 and v.shape == (4, 3) and f.dtype == np.int64
    assert f.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]


@pytest.mark.parametrize("text, match", [
    ("v 0 0 0\nv 1 x 0\nv 0 1 0\nf 1 2 3\n", "line 2"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "out of 1..3"),
    ("v 0 0 0\nv 1 0 0\nf 1 2\n", "at least 3 corners"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "out of"),
    ("v 0 0 0\nv 1 0\n", "x y z"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
    ("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite"),
])
def test_a_malformed_obj_is_a_one_line_error(tmp_path, text, match):
    path = tmp_path / "bad.obj"
    path.write_text(text)
    with pytest.raises(MetaINRError, match=match) as err:
        read_obj(path)
    assert "\n" not in str(err.value)


def test_a_missing_binary_or_oversized_obj_is_a_one_line_error(tmp_path, monkeypatch):
    with pytest.raises(MetaINRError, match="cannot read") as err:
        read_obj(tmp_path / "nothing.obj")
    assert "\n" not in str(err.value)
    (tmp_path / "binary.obj").write_bytes(b"\xff\xfe\x00v 0 0 0\n")
    with pytest.raises(MetaINRError, match="cannot read"):
        read_obj(tmp_path / "binary.obj")
    (tmp_path / "cube.obj").write_text(_cube_obj())
    monkeypatch.setattr(meshes, "MAX_FACES", 11)
    with pytest.raises(MetaINRError, match="more than 11"):
        read_obj(tmp_path / "cube.obj")


# -- the ray caster against the box caster -----------------------------------------------------------------
@pytest.mark.parametrize("angle", [0.0, 0.9])
def test_an_obj_cube_renders_exactly_as_the_box_renderer_draws_the_box(tmp_path, angle):
    """Two independent casters (triangles vs slabs), random cameras above and below the horizon."""
    (tmp_path / "cube.obj").write_text(_cube_obj())
    v, f = read_obj(tmp_path / "cube.obj")
    colour = torch.tensor([0.3, 0.6, 0.85], dtype=torch.float64)
    mesh = MeshObject(torch.from_numpy(v), torch.from_numpy(f), colour, angle)
    box = BoxObject(torch.tensor([LO], dtype=torch.float64), torch.tensor([HI], dtype=torch.float64), colour[None],
                    angle)
    c2w = orbit_cameras(6, (-1.3, 1.3), 3.5, torch.Generator().manual_seed(4), dtype=torch.float64)
    for background in (1.0, 0.0):
        rgb, mask = render_mesh_views(mesh, c2w, 33, 33, 30.0, background)
        ref, ref_mask = render_views(box, c2w, 33, 33, 30.0, background)
        assert torch.equal(mask, ref_mask) and 0 < mask.mean() < 1  # the same silhouette, pixel for pixel
        assert (rgb - ref).abs().max() <= 1e-6
        assert torch.equal(rgb[mask == 0], ref[ref_mask == 0])  # the background exactly
    depth, normal, _ = cast_mesh(mesh, c2w[:, None, :3, 3].expand(-1, 4, 3).reshape(-1, 3),
                                 -c2w[:, None, :3, 2].expand(-1, 4, 3).reshape(-1, 3))  # optical axes hit
    assert torch.isfinite(depth).all() and torch.allclose(normal.norm(dim=-1), torch.ones(24, dtype=torch.float64))
    low, low_mask = render_mesh_views(mesh, c2w.float(), 9, 9, 8.0)
    assert low.dtype == low_mask.dtype == torch.float32 and low.shape == (6, 9, 9, 3)


def test_inward_wound_faces_are_shaded_two_sided(tmp_path):
    (tmp_path / "cube.obj").write_text(_cube_obj())
    v, f = read_obj(tmp_path / "cube.obj")
    colour = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    c2w = orbit_cameras(3, (0.0, 1.0), 4.0, torch.Generator().manual_seed(1), dtype=torch.float64)
    out, _ = render_mesh_views(MeshObject(torch.from_numpy(v), torch.from_numpy(f), colour), c2w, 16, 16, 14.0)
    flipped, _ = render_mesh_views(MeshObject(torch.from_numpy(v), torch.from_numpy(f[:, [0, 2, 1]]), colour), c2w,
                                   16, 16, 14.0)
    assert torch.equal(out, flipped)


def test_normalised_meshes_are_centred_in_the_object_ball():
    v = np.array([[1.0, 2, 3], [5, 2, 3], [1, 8, 3], [1, 2, 4]])
    obj = MeshObject.normalised(v, np.array([[0, 1, 2], [0, 1, 3]]), angle=0.5)
    box_centre = 0.5 * (obj.vertices.amin(0) + obj.vertices.amax(0))
    assert torch.allclose(box_centre, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert math.isclose(obj.radius(), meshes.MESH_RADIUS) and obj.radius() < OBJECT_RADIUS
    assert obj.colour.tolist() == list(meshes.GREY) and obj.angle == 0.5
    with pytest.raises(ValueError):
        MeshObject.normalised(np.zeros((3, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError):
        MeshObject(obj.vertices, torch.tensor([[0, 1, 9]]), obj.colour)


# -- the dataset ------------------------------------------------------------------------------------------
def test_mesh_objects_from_a_folder_of_fake_urdfs(tmp_path):
    root = _fake_root(tmp_path)
    train = mesh_objects("train", count=2, views=3, resolution=12, root=root, background=0.0, rotate=True)
    assert train.images.shape == (2, 3, 12, 12, 3) and train.poses.shape == (2, 3, 4, 4)
    assert train.masks.shape == (2, 3, 12, 12) and train.images.dtype == torch.float32
    assert train.near == 4.0 - OBJECT_RADIUS and train.far == 4.0 + OBJECT_RADIUS and train.name == "meshes-train"
    assert (train.masks.flatten(2).sum(-1) > 0).all()
    assert torch.equal(train.images[train.masks == 0], torch.zeros(int((train.masks == 0).sum()), 3))
    red = [bool((train.images[k][train.masks[k] > 0][:, 1:] == 0).all()) for k in range(2)]
    grey = [bool((train.images[k][train.masks[k] > 0].diff(dim=-1).abs() < 1e-6).all()) for k in range(2)]
    assert sorted(red) == sorted(grey) == [False, True] and red != grey  # urdf colour, and grey without a urdf
    again = mesh_objects("train", count=1, views=3, resolution=12, root=root, background=0.0, rotate=True)
    assert torch.equal(again.images, train.images[:1]) and torch.equal(again.poses, train.poses[:1])
    val = mesh_objects("val", count=1, views=2, resolution=8, root=root)
    assert val.images.shape == (1, 2, 8, 8, 3) and (val.masks.flatten(1).sum(-1) > 0).all()
    with pytest.raises(MetaINRError, match="fewer than count=1"):
        mesh_objects("test", count=1, views=2, resolution=8, root=root)
    with pytest.raises(MetaINRError, match="split"):
        mesh_objects("holdout", root=root)


def test_mesh_objects_without_pybullet_say_how_to_install_it(monkeypatch):
    monkeypatch.setattr(meshes.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MetaINRError, match="pip install pybullet") as err:
        mesh_objects("train", count=1, views=1, resolution=8)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not HAS_PYBULLET, reason="pybullet is not installed (pip install metainr[meshes])")
def test_pybullet_random_meshes_render_non_empty_silhouettes():
    views = mesh_objects("train", count=2, views=2, resolution=16)
    assert views.images.shape == (2, 2, 16, 16, 3)
    assert (views.masks.flatten(2).sum(-1) > 0).all() and (views.masks.mean() < 0.9)
    folder = meshes.random_urdfs_root()
    assert len(list(folder.glob("*/*.obj"))) == 1000
    assert meshes.read_urdf_colour(folder / "000" / "000.urdf") != meshes.GREY


def test_the_views_task_loads_meshes(tmp_path, monkeypatch):
    root = _fake_root(tmp_path)
    monkeypatch.setattr(meshes, "random_urdfs_root", lambda: root)
    task = ViewsTask(resolution=8, views=2, count=2, val_count=1, rays=8, n_samples=4)
    loaded = task.load("meshes", "train")
    assert loaded.images.shape == (2, 2, 8, 8, 3) and loaded.masks is None
    assert (loaded.near, loaded.far) == (4.0 - OBJECT_RADIUS, 4.0 + OBJECT_RADIUS)
    assert len(task.load("meshes", "val")) == 1
    batch = task.batch(loaded)
    assert batch.query.shape == (2, 2 * 8 * 8, 6)
