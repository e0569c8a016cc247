"""Foundations of 3D view synthesis: cameras and rays, the independent box renderer, the
NeRF-synthetic loader and volume rendering, checked against analytic answers."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from metainr.data.box_objects import AMBIENT, LIGHT, OBJECT_RADIUS, BoxObject, box_objects, chair, render_views, table
from metainr.data.cameras import camera_rays, focal_from_fov, look_at_sphere, orbit_cameras, rays_to_query
from metainr.data.nerf_synthetic import nerf_synthetic
from metainr.errors import MetaINRError
from metainr.limits import use_limits
from metainr.tasks.volume_rendering import composite, render_query, render_rays, split_rays, stratified_depths


# -- cameras ------------------------------------------------------------------------------------------
def test_look_at_cameras_are_orthonormal_and_look_at_the_origin_with_z_up():
    az = torch.tensor([0.0, 0.7, 2.0, 4.0, 1.0], dtype=torch.float64)
    el = torch.tensor([0.0, 0.3, -0.4, math.pi / 2, -math.pi / 2], dtype=torch.float64)
    c2w = look_at_sphere(az, el, 4.0)
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(c2w[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64).expand(5, 4))
    position = c2w[:, :3, 3]
    assert torch.allclose(position.norm(dim=-1), torch.full((5,), 4.0, dtype=torch.float64))
    assert torch.allclose(-rot[:, :, 2], -position / 4.0, atol=1e-12)  # looks down its -z at the origin
    assert torch.allclose(rot[:4, 2, 0], torch.zeros(4, dtype=torch.float64), atol=1e-12)  # right is horizontal
    assert rot[0, 2, 1] == 1.0  # at the horizon the camera's up is world +z


def test_rays_of_a_camera_on_the_axis_hit_the_expected_points():
    c2w = look_at_sphere(0.0, 0.0, 4.0)  # at (4, 0, 0): right = +y, up = +z
    angle = 0.8
    size = 5  # odd: the centre pixel's ray is the optical axis
    focal = focal_from_fov(angle, size)
    origins, dirs = camera_rays(c2w, size, size, focal)
    assert origins.shape == dirs.shape == (1, size * size, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, size * size))
    centre = size * size // 2
    hit = origins[0, centre] + 4.0 * dirs[0, centre]
    assert torch.allclose(hit, torch.zeros(3), atol=1e-6)  # the centre ray passes through the origin
    # the top-left pixel's centre sits half a pixel in from the corner of the field of view
    half = math.tan(angle / 2) * (size - 1) / size
    expect = torch.tensor([-1.0, -half, half])
    assert torch.allclose(dirs[0, 0], expect / expect.norm(), atol=1e-6)
    # row-major: the second ray is one pixel to the right (+y), the row below is one pixel down (-z)
    plane = dirs[0] / -dirs[0, :, :1]  # where rays cross the plane one unit in front of the camera
    step = 1 / focal
    assert torch.allclose(plane[1] - plane[0], torch.tensor([0.0, step, 0.0]), atol=1e-6)
    assert torch.allclose(plane[size] - plane[0], torch.tensor([0.0, 0.0, -step]), atol=1e-6)
    assert torch.allclose(rays_to_query(origins, dirs)[..., 3:], dirs)


def test_orbit_cameras_are_reproducible_and_stay_in_the_band():
    a = orbit_cameras(50, (0.2, 1.0), 3.0, torch.Generator().manual_seed(1))
    b = orbit_cameras(50, (0.2, 1.0), 3.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    elevation = torch.asin(a[:, 2, 3] / 3.0)
    assert elevation.min() >= 0.2 - 1e-5 and elevation.max() <= 1.0 + 1e-5
    ring = orbit_cameras(4, (0.5, 0.5), 2.0, fixed=True, dtype=torch.float64)
    assert torch.allclose(ring[1, :3, 3], 2.0 * torch.tensor([0.0, math.cos(0.5), math.sin(0.5)], dtype=torch.float64))


# -- the independent renderer ----------------------------------------------------------------------
def test_a_box_seen_from_above_has_the_analytic_silhouette_and_shading():
    lo, hi = torch.tensor([[-0.33, -0.52, -0.2]]), torch.tensor([[0.33, 0.52, 0.25]])
    colour = torch.tensor([[0.2, 0.6, 0.9]])
    box = BoxObject(lo.double(), hi.double(), colour.double())
    size, dist, focal = 40, 4.0, 30.0
    c2w = look_at_sphere(0.0, math.pi / 2, dist).double()  # straight above: right = +y, up = -x
    rgb, mask = render_views(box, c2w, size, size, focal)
    # pixel centres, projected onto the top face z = 0.25: inside iff |y| < 0.52 and |x| < 0.33
    u = (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / focal * (dist - 0.25)
    expect = (u.abs()[:, None] < 0.33) & (u.abs()[None, :] < 0.52)  # rows <-> x, columns <-> y
    assert torch.equal(mask[0] > 0.5, expect)  # exact here: no pixel centre lies on an edge
    assert int(mask.sum()) == int(expect.sum())
    assert torch.equal(rgb[0][~expect], torch.ones(int((~expect).sum()), 3, dtype=torch.float64))
    light = torch.tensor(LIGHT, dtype=torch.float64)
    top = colour.double()[0] * (AMBIENT + (1 - AMBIENT) * float(light[2] / light.norm()))
    assert torch.allclose(rgb[0][expect], top.expand(int(expect.sum()), 3))
    black, _ = render_views(box, c2w, size, size, focal, background=0.0)
    assert torch.equal(black[0][~expect], torch.zeros(int((~expect).sum()), 3, dtype=torch.float64))


def test_a_box_seen_from_the_side_matches_within_a_pixel_and_supersampling_gives_coverage():
    box = BoxObject(torch.tensor([[-0.4, -0.3, -0.5]], dtype=torch.float64),
                    torch.tensor([[0.4, 0.3, 0.5]], dtype=torch.float64), torch.tensor([[0.5, 0.5, 0.5]]).double())
    c2w = look_at_sphere(0.0, 0.0, 6.0).double()  # at +x, seeing the face x = 0.4 (and nothing else)
    size, focal = 32, 40.0
    _, mask = render_views(box, c2w, size, size, focal)
    _, cover = render_views(box, c2w, size, size, focal, supersample=8)
    side = focal / (6.0 - 0.4)  # pixels per unit on the face
    area = (0.6 * side) * (1.0 * side)
    assert abs(float(mask.sum()) - area) < 2 * (0.6 + 1.0) * side + 4  # within a 1-pixel border
    assert abs(float(cover.sum()) - area) < 0.3  # coverage converges to the projected area
    assert cover.min() >= 0 and cover.max() <= 1


def test_rotation_turns_a_box_about_the_vertical_axis():
    lo, hi, c = torch.tensor([[-0.6, -0.1, -0.1]]), torch.tensor([[0.6, 0.1, 0.1]]), torch.tensor([[0.3, 0.3, 0.3]])
    c2w = look_at_sphere(0.0, math.pi / 2, 4.0).double()
    turned = BoxObject(lo.double(), hi.double(), c.double(), angle=math.pi / 2)
    swapped = BoxObject(torch.tensor([[-0.1, -0.6, -0.1]]).double(), torch.tensor([[0.1, 0.6, 0.1]]).double(),
                        c.double())
    a, ma = render_views(turned, c2w, 24, 24, 20.0)
    b, mb = render_views(swapped, c2w, 24, 24, 20.0)
    assert torch.equal(ma, mb) and torch.allclose(a, b, atol=1e-12)


def test_box_object_datasets_are_deterministic_valid_and_disjoint_across_splits():
    train = box_objects("chairs", "train", count=3, views=4, resolution=16, seed=5, rotate=True)
    again = box_objects("chairs", "train", count=2, views=4, resolution=16, seed=5, rotate=True)
    test = box_objects("chairs", "test", count=3, views=4, resolution=16, seed=5, rotate=True)
    assert train.images.shape == (3, 4, 16, 16, 3) and train.poses.shape == (3, 4, 4, 4)
    assert train.masks.shape == (3, 4, 16, 16) and train.images.dtype == torch.float32
    assert torch.equal(train.images[:2], again.images) and torch.equal(train.poses[:2], again.poses)
    assert not torch.equal(train.images, test.images) and not torch.equal(train.poses, test.poses)
    assert train.images.min() >= 0 and train.images.max() <= 1
    assert train.near == 4.0 - OBJECT_RADIUS and train.far == 4.0 + OBJECT_RADIUS
    assert torch.allclose(train.poses[..., :3, 3].norm(dim=-1), torch.full((3, 4), 4.0))
    assert (train.masks.flatten(2).sum(-1) > 0).all()  # every view sees its object
    background = train.masks == 0
    assert torch.equal(train.images[background], torch.ones(int(background.sum()), 3))
    rng = np.random.default_rng(0)
    assert max(max(chair(rng, True).radius(), table(rng, True).radius()) for _ in range(200)) < OBJECT_RADIUS
    tables, chairs = box_objects("tables", "train", 1, 2, 8), box_objects("chairs", "train", 1, 2, 8)
    assert not torch.equal(tables.images, chairs.images)
    with pytest.raises(MetaINRError, match="unknown box object kind"):
        box_objects("sofas")
    with pytest.raises(MetaINRError, match="split"):
        box_objects(split="holdout")
    with use_limits(max_pixels=100), pytest.raises(MetaINRError, match="max-pixels"):
        box_objects(count=1, views=2, resolution=8)


# -- NeRF-synthetic folders -----------------------------------------------------------------------------
def _write_scene(root, size=(6, 4)):
    (root / "train").mkdir(parents=True)
    frames = []
    for k in range(3):
        rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
        rgba[..., 0] = 200
        rgba[..., 3] = [0, 255, 128][k]
        name = f"train/r_{k}"
        Image.fromarray(rgba, "RGBA").save(root / f"{name}.png")
        c2w = look_at_sphere(0.5 * k, 0.3, 4.0)[0].tolist()
        frames.append({"file_path": f"./{name}" if k < 2 else f"{name}.png", "rotation": 0.1, "transform_matrix": c2w})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.6911, "frames": frames}))
    return frames


def test_a_nerf_synthetic_folder_loads_with_poses_focal_and_white_compositing(tmp_path):
    frames = _write_scene(tmp_path)
    views = nerf_synthetic(tmp_path, "train")
    assert views.images.shape == (3, 4, 6, 3) and views.poses.shape == (3, 4, 4)
    assert torch.allclose(views.poses, torch.tensor([f["transform_matrix"] for f in frames]))
    assert views.focal == pytest.approx(0.5 * 6 / math.tan(0.5 * 0.6911))
    a = torch.tensor([0.0, 1.0, 128 / 255])[:, None, None]
    red = 200 / 255
    assert torch.allclose(views.images[..., 0], red * a + (1 - a) + 0 * views.images[..., 0], atol=1e-6)
    assert torch.allclose(views.images[..., 1], 1 - a + 0 * views.images[..., 1], atol=1e-6)
    assert torch.allclose(views.masks, a.expand(3, 4, 6))
    black = nerf_synthetic(tmp_path, "train", background=0.0, resolution=3)  # resized to width 3
    assert black.images.shape == (3, 2, 3, 3) and black.focal == pytest.approx(views.focal / 2)
    assert torch.allclose(black.images[..., 0], red * a.expand(3, 2, 3), atol=1e-6)
    (tmp_path / "transforms.json").write_text((tmp_path / "transforms_train.json").read_text())
    assert nerf_synthetic(tmp_path, "test").poses.shape == (3, 4, 4)  # a single transforms.json serves every split


@pytest.mark.parametrize("change, message", [
    (lambda meta: "{not json", "malformed JSON"),
    (lambda meta: {"frames": meta["frames"]}, "missing key 'camera_angle_x'"),
    (lambda meta: {**meta, "frames": [{"file_path": "./train/r_0"}]}, "frame 0 is missing key 'transform_matrix'"),
    (lambda meta: {**meta, "frames": [{**meta["frames"][0], "transform_matrix": [[1, 0, 0], [0, 1, 0]]}]},
     "not a 4x4 matrix"),
    (lambda meta: {**meta, "frames": [{**meta["frames"][0], "transform_matrix": [[float("nan")] * 4] * 4}]},
     "NaN or infinite"),
    (lambda meta: {**meta, "frames": [{**meta["frames"][0], "file_path": "./train/missing"}]}, "not found"),
])
def test_bad_nerf_synthetic_input_is_a_one_line_error_naming_the_file(tmp_path, change, message):
    _write_scene(tmp_path)
    file = tmp_path / "transforms_train.json"
    meta = change(json.loads(file.read_text()))
    file.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(MetaINRError, match=message) as info:
        nerf_synthetic(tmp_path)
    assert "\n" not in str(info.value)
    assert "transforms_train.json" in str(info.value) or "missing.png" in str(info.value)


def test_nerf_synthetic_rejects_mixed_sizes_missing_files_and_huge_images(tmp_path):
    with pytest.raises(MetaINRError, match="no transforms_train.json"):
        nerf_synthetic(tmp_path)
    _write_scene(tmp_path)
    Image.fromarray(np.zeros((5, 5, 4), dtype=np.uint8), "RGBA").save(tmp_path / "train" / "r_1.png")
    with pytest.raises(MetaINRError, match="r_1.png: size 5x5 differs"):
        nerf_synthetic(tmp_path)
    with use_limits(max_pixels=10), pytest.raises(MetaINRError, match="r_0.png.*max-pixels"):
        nerf_synthetic(tmp_path)


# -- volume rendering -------------------------------------------------------------------------------
def _slab_field(density, colour, a, b):
    """A field with ``density`` between depths a and b along rays from the origin (|x| in [a, b])."""
    def field_fn(params, x):
        r = x.norm(dim=-1, keepdim=True)
        inside = ((r > a) & (r < b)).to(x.dtype)
        raw_rgb = torch.logit(torch.as_tensor(colour, dtype=x.dtype)).expand(x.shape[0], 3)
        return torch.cat([density * params["scale"] * inside, raw_rgb], dim=-1)
    return field_fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_density_slab_matches_the_analytic_transmittance(dtype):
    s, a, b, near, far = 1.3, 1.0, 2.5, 0.5, 3.0
    colour = torch.tensor([0.2, 0.7, 0.4], dtype=dtype)
    dirs = torch.nn.functional.normalize(torch.randn(7, 3, dtype=dtype), dim=-1)
    origins = torch.zeros(7, 3, dtype=dtype)
    params = {"scale": torch.ones((), dtype=dtype)}
    rgb, opacity = render_rays(_slab_field(s, colour, a, b), params, origins, dirs, near, far, 4096,
                               background=1.0, return_opacity=True)
    transmittance = math.exp(-s * (b - a))
    assert rgb.dtype == dtype and rgb.shape == (7, 3)
    assert torch.allclose(opacity, torch.full((7,), 1 - transmittance, dtype=dtype), atol=1e-3)
    assert torch.allclose(rgb, (colour * (1 - transmittance) + transmittance).expand(7, 3), atol=1e-3)
    # directions that are not unit: depths are in their units, densities per world length
    rgb2 = render_rays(_slab_field(s, colour, a, b), params, origins, 2 * dirs, near / 2, far / 2, 4096)
    assert torch.allclose(rgb2, rgb, atol=1e-3)
    empty = render_rays(_slab_field(0.0, colour, a, b), params, origins, dirs, near, far, 8, background=0.25)
    assert torch.allclose(empty, torch.full((7, 3), 0.25, dtype=dtype))


def test_compositing_weights_follow_the_documented_quadrature():
    t = stratified_depths(1.0, 3.0, 4, 2, like=torch.zeros(0, dtype=torch.float64))
    assert torch.allclose(t[0], torch.tensor([1.25, 1.75, 2.25, 2.75], dtype=torch.float64))
    sigma = torch.tensor([[0.0, 2.0, 0.0, 1.0], [1e6, 1e6, 1e6, 1e6]], dtype=torch.float64)
    rgb = torch.rand(2, 4, 3, dtype=torch.float64)
    colour, weights, opacity = composite(sigma, rgb, t, background=torch.tensor([0.0, 0.5, 1.0]).double())
    delta = 0.5  # every delta, the last included, for midpoints
    alpha = 1 - torch.exp(-sigma[0] * delta)
    trans = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - alpha, 0)[:-1]])
    assert torch.allclose(weights[0], trans * alpha)
    assert torch.allclose(opacity, weights.sum(-1)) and torch.allclose(opacity[1], torch.ones((), dtype=torch.float64))
    assert torch.allclose(colour[1], rgb[1, 0])  # an opaque first sample hides the rest
    g = torch.Generator().manual_seed(0)
    jittered = stratified_depths(1.0, 3.0, 4, 100, generator=g)
    assert (jittered[:, 1:] > jittered[:, :-1]).all()
    assert ((jittered - 1.0) // 0.5 == torch.arange(4)).all()  # one sample in each bin


def test_render_rays_works_under_vmap_over_signals_and_matches_a_loop():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).double()
    from metainr.functional import field_function
    field_fn = field_function(net)
    stacked = {n: torch.stack([p.detach(), p.detach() + 0.1 * torch.randn_like(p)]) for n, p in net.named_parameters()}
    c2w = look_at_sphere(torch.tensor([0.0, 1.0]), 0.4, 3.0).double()
    origins, dirs = camera_rays(c2w, 3, 4, 4.0)
    query = rays_to_query(origins, dirs)  # (2, 12, 6): one set of rays per signal
    observe = lambda p, q: render_query(field_fn, p, q, 1.0, 5.0, 16)  # noqa: E731
    batched = torch.vmap(observe)(stacked, query)
    looped = torch.stack([observe({n: v[i] for n, v in stacked.items()}, query[i]) for i in range(2)])
    assert batched.shape == (2, 12, 3) and batched.dtype == torch.float64
    assert torch.allclose(batched, looped, atol=1e-12)
    shared = torch.vmap(observe, in_dims=(0, None))(stacked, query[0])  # one query shared by the batch
    assert torch.allclose(shared[0], looped[0], atol=1e-12)
    # differentiable to second order under vmap: a MAML meta-gradient through one inner step
    init = {n: p.detach() for n, p in net.named_parameters()}

    def adapted_loss(p, q):
        g = torch.func.grad(lambda p: observe(p, q).pow(2).mean())(p)
        return observe({n: p[n] - 0.1 * g[n] for n in p}, q).pow(2).mean()

    meta = torch.func.grad(lambda p: torch.vmap(adapted_loss, in_dims=(None, 0))(p, query).sum())(init)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in meta.values())
    o, d = split_rays(query)
    assert torch.equal(o, origins) and torch.equal(d, dirs)


def test_rays_and_rendering_make_every_tensor_on_the_device_of_their_inputs():
    c2w = look_at_sphere(torch.zeros(2, device="meta"), torch.zeros(2, device="meta"), 3.0)
    origins, dirs = camera_rays(c2w, 4, 4, 3.0)
    assert origins.device.type == dirs.device.type == "meta"
    field_fn = lambda p, x: x @ p["w"]  # noqa: E731
    rgb = render_rays(field_fn, {"w": torch.zeros(3, 4, device="meta")}, origins[0], dirs[0], 1.0, 5.0, 8,
                      background=torch.ones(3, device="meta"))
    assert rgb.device.type == "meta" and rgb.shape == (16, 3)


def test_photos_show_one_chair_under_each_photos_own_lighting():
    """learnit's Phototourism setting offline: every photo the same geometry, its own light."""
    from metainr.data.box_objects import Lighting, box_objects, photo_scene, render_views, shade

    a, b = box_objects("photos", "train", count=2, views=1, resolution=16), box_objects("photos", "test", count=1,
                                                                                       views=1, resolution=16)
    assert a.images.shape == (2, 1, 16, 16, 3) and b.images.shape == (1, 1, 16, 16, 3)
    obj = photo_scene(None)
    c2w = a.poses[0].double()
    lit = [render_views(obj, c2w, 16, 16, a.focal, lighting=Lighting((0, 0, 1), 0.2, (1.0, 0.8, 0.6)))[0],
           render_views(obj, c2w, 16, 16, a.focal, lighting=Lighting((1, 0, 0), 0.4, (0.7, 1.0, 1.2)))[0]]
    masks = [render_views(obj, c2w, 16, 16, a.focal, lighting=Lighting((0, 0, 1), 0.2))[1],
             render_views(obj, c2w, 16, 16, a.focal)[1]]
    assert torch.equal(masks[0], masks[1]) and masks[0].sum() > 0  # the same silhouette under any light
    assert (lit[0] - lit[1]).abs().max() > 0.1
    # a face looking at the light: tint * colour * (ambient + (1 - ambient) * 1), clipped
    up, colour = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.9]])
    out = shade(up, colour, Lighting((0, 0, 2), 0.3, (1.0, 0.5, 1.5)))
    assert torch.allclose(out, torch.tensor([[0.5, 0.25, 1.0]]))
