"""The views task: objects in posed views seen through volume rendering, with every learner, ``fit``
and the CLI unchanged — batch shapes, the forward model against a direct render of each object's
own cameras, novel-view metrics, files, a short meta-training that beats random init from one view."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from metainr import FieldConfig, TrainConfig, build_field, build_learner, fit, mean_psnr, meta_train
from metainr.data.box_objects import box_objects
from metainr.data.nerf_synthetic import nerf_synthetic_objects
from metainr.errors import MetaINRError
from metainr.functional import field_function
from metainr.tasks import TASKS, ViewsBatch, ViewsTask, build_task
from metainr.tasks.views_batches import pack_views
from metainr.tasks.volume_rendering import render_rays
from metainr.train import load_learner

SIDE = 16


def _objects(count=3, views=4, split="train", side=SIDE, rotate=False):
    return box_objects("chairs", split, count, views, side, rotate=rotate)


def _field(width=32, depth=3, n_freqs=4, seed=0):
    return build_field(FieldConfig(kind="pe", in_dim=3, out_dim=4, width=width, depth=depth, n_freqs=n_freqs,
                                   output_offset=0.0, seed=seed))


def _params(field, b):
    return {n: p.detach().expand(b, *p.shape).clone() for n, p in field.named_parameters()}


# -- data and batches ----------------------------------------------------------------------------------
def test_posed_views_index_like_a_tensor_of_objects():
    views = _objects(count=4, views=2, side=8)
    assert len(views) == 4 and views.is_set
    idx = torch.tensor([3, 1])
    picked = views[idx]
    assert len(picked) == 2 and torch.equal(picked.images, views.images[idx]) and torch.equal(picked.poses[1],
                                                                                             views.poses[1])
    assert torch.equal(views[1:3].images, views.images[1:3]) and views[[0]].images.shape[0] == 1
    scene = views[2]  # an int drops the object dimension: one scene
    assert scene.images.shape == (2, 8, 8, 3) and not scene.is_set and len(scene.as_set()) == 1
    assert torch.equal(views.select_views([1]).poses, views.poses[:, 1:])
    assert scene.select_views(slice(1)).masks.shape[0] == 1
    with pytest.raises(TypeError):
        len(scene)


def test_the_task_is_registered_and_its_batches_have_the_documented_shapes():
    task = build_task("views", resolution=SIDE, views=4, rays=32, n_samples=8)
    assert isinstance(task, ViewsTask) and TASKS["views"] is ViewsTask and (task.in_dim, task.out_dim) == (3, 4)
    assert build_task(task.spec()).config == task.config
    objects = _objects()
    n, v, hw = 3, 4, SIDE * SIDE
    train = task.train_batch(objects, torch.Generator().manual_seed(0))
    assert isinstance(train, ViewsBatch) and train.query.shape == (n, 32, 6) and train.values.shape == (n, 32, 3)
    assert train.context is None and train.reference.shape == (n, v, SIDE, SIDE, 9) and train.per_signal_query
    full = task.batch(objects)
    assert full.query.shape == (n, v * hw, 6) and full.values.shape == (n, v * hw, 3)
    assert torch.equal(full.values, objects.images.reshape(n, -1, 3))  # every pixel of every view, in order
    (val,) = task.validation_batches(objects)
    assert val.query.shape == (n, hw, 6) and torch.equal(val.query, full.query[:, :hw])  # the first view only
    assert (val.near, val.far) == (objects.near, objects.far)
    assert task.tokens(val).shape == (n, (SIDE // 2) ** 2, 2 * 2 * 9)  # 2x2 patches: 8 a side
    # few-view inner loops: the context is the rows drawn from the first (shuffled) views only
    few = build_task("views", resolution=SIDE, rays=32, n_samples=8, inner_views=1, jitter=False)
    batch = few.train_batch(objects, torch.Generator().manual_seed(1))
    assert batch.query.shape == (n, 64, 6) and torch.equal(batch.context, torch.arange(32))
    first = batch.reference[:, 0].reshape(n, hw, 9)
    for b in range(n):
        rows = torch.cat([batch.query[b, :32], batch.values[b, :32]], dim=-1)
        assert (rows[:, None] == first[b][None]).all(-1).any(-1).all()  # each context row is a pixel of view 0


def test_training_rays_are_pixels_of_their_own_object_and_reproducible():
    objects = _objects()
    task = ViewsTask(resolution=SIDE, rays=40, n_samples=8, jitter=False)
    a = task.train_batch(objects, torch.Generator().manual_seed(3))
    assert torch.equal(a.query, task.train_batch(objects, torch.Generator().manual_seed(3)).query)
    packed = pack_views(objects, objects.near, objects.far).reshape(3, -1, 9)
    for b in range(3):
        rows = torch.cat([a.query[b], a.values[b]], dim=-1)
        assert (rows[:, None] == packed[b][None]).all(-1).any(-1).all()  # drawn from object b's own pixels
    assert not torch.equal(a.query[0], a.query[1])
    jittered = ViewsTask(resolution=SIDE, rays=40, n_samples=8).train_batch(objects, torch.Generator().manual_seed(3))
    shift = jittered.query[..., :3] - a.query[..., :3]  # along each segment, by less than half a bin
    along = (shift * a.query[..., 3:]).sum(-1) / a.query[..., 3:].pow(2).sum(-1)
    assert torch.allclose(shift, along[..., None] * a.query[..., 3:], atol=1e-5)
    assert along.abs().max() <= 0.5 / 8 + 1e-6 and along.abs().max() > 0.01


def test_observe_is_a_direct_render_of_each_objects_own_camera_rays():
    objects = _objects(count=2, views=2)
    task = ViewsTask(resolution=SIDE, n_samples=12, background=0.7)
    field = _field()
    fn, params = field_function(field), {n: p.detach() for n, p in field.named_parameters()}
    batch = task.batch(objects)
    for b in range(2):  # each object's rows are its own cameras' rays (the poses differ per object)
        origins, directions = objects[b].rays()
        direct = render_rays(fn, params, origins.reshape(-1, 3), directions.reshape(-1, 3), objects.near,
                             objects.far, 12, background=0.7, density="softplus")
        torch.testing.assert_close(task.observe(fn, params, batch.query[b]), direct, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch.query[0], batch.query[1])


def test_metrics_render_the_novel_views_and_fall_back_to_the_observed_one():
    objects = _objects(count=2, views=3)
    task = ViewsTask(resolution=SIDE, n_samples=8)
    field = _field()
    fn, params = field_function(field), _params(field, 2)
    (batch,) = task.validation_batches(objects)
    novel = task.reconstruct(fn, params, batch)
    assert novel.shape == (2, 2, SIDE, SIDE, 3)  # views 1 and 2: not the fitted view 0
    scores = task.metrics(fn, params, batch, ("psnr", "ssim"))
    truth = objects.images[:, 1:]
    expect = -10 * torch.log10((novel - truth).pow(2).flatten(1).mean(1))
    torch.testing.assert_close(scores["psnr"], expect, atol=1e-4, rtol=1e-4)
    assert scores["ssim"].shape == (2,)
    one = task.fit_batch(objects.select_views(slice(0, 1)))
    assert task.reconstruct(fn, params, one).shape == (2, 1, SIDE, SIDE, 3)  # a single view scores itself


def test_views_batches_follow_their_inputs_device():
    objects = _objects(count=2, views=2).to("meta")
    task = ViewsTask(resolution=SIDE, rays=16, n_samples=8, inner_views=1)
    for batch in (task.train_batch(objects, torch.Generator().manual_seed(0)), task.batch(objects)):
        assert batch.query.device.type == batch.values.device.type == batch.reference.device.type == "meta"
        assert batch.context is None or batch.context.device.type == "meta"
        assert task.tokens(batch).device.type == "meta"
    params = {"w": torch.zeros(3, 4, device="meta")}
    out = task.observe(lambda p, x: x @ p["w"], params, task.batch(objects).query[0])
    assert out.device.type == "meta" and out.shape == (2 * SIDE * SIDE, 3)


@pytest.mark.parametrize("options, message", [
    (dict(density="exp"), "density"), (dict(near=3.0, far=2.0), "near < far"), (dict(n_samples=1), "n_samples"),
    (dict(input_views=0), "input_views"), (dict(background=2.0), "background"),
])
def test_bad_settings_are_one_line_value_errors(options, message):
    with pytest.raises(ValueError, match=message) as info:
        ViewsTask(**options)
    assert "\n" not in str(info.value)


def test_bad_signals_and_batches_are_value_errors():
    task = ViewsTask(resolution=SIDE)
    with pytest.raises(ValueError, match="PosedViews"):
        task.batch(torch.zeros(2, 4, SIDE, SIDE, 3))
    batch = task.batch(_objects(count=1, views=1))
    with pytest.raises(ValueError, match="reference"):
        task.tokens(type(batch)(batch.query, batch.values))
    with pytest.raises(ValueError, match="patch_size 3 does not divide"):
        ViewsTask(resolution=SIDE, patch_size=3).tokens(batch)


# -- files ----------------------------------------------------------------------------------------------
def _write_scene(root, objects, index=0):
    """One object of ``objects`` as a NeRF-synthetic folder: RGBA PNGs + transforms.json."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for k in range(objects.images.shape[1]):
        rgba = np.concatenate([objects.images[index, k].numpy(), objects.masks[index, k, ..., None].numpy()], -1)
        Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(root / "images" / f"r_{k}.png")
        frames.append({"file_path": f"./images/r_{k}", "transform_matrix": objects.poses[index, k].tolist()})
    angle = 2 * math.atan(0.5 * objects.width / objects.focal)
    (root / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return root / "transforms.json"


def test_a_transforms_file_reads_as_one_object_observed_in_its_first_views(tmp_path):
    objects = _objects(count=1, views=3)
    file = _write_scene(tmp_path, objects)
    task = ViewsTask(resolution=SIDE, input_views=2, near=objects.near, far=objects.far)
    batch = task.read(file)
    assert batch.query.shape == (1, 2 * SIDE * SIDE, 6) and batch.reference.shape == (1, 3, SIDE, SIDE, 9)
    torch.testing.assert_close(batch.reference[..., 6:], objects.images, atol=1 / 255, rtol=0)
    torch.testing.assert_close(batch.query, task.fit_batch(objects).query, atol=1e-5, rtol=1e-5)
    assert task.read(tmp_path).query.shape == batch.query.shape  # its folder reads the same
    loaded = task.load(str(tmp_path), "train")
    assert len(loaded) == 1 and loaded.images.shape == (1, 3, SIDE, SIDE, 3)
    settled = ViewsTask(resolution=SIDE).settled(ViewsTask(resolution=SIDE).read(file))
    assert (settled.config.near, settled.config.far) == (2.0, 6.0)  # NeRF-synthetic's range, from the data
    out = tmp_path / "out.png"
    assert task.write(out, torch.rand(3, SIDE, SIDE, 3)) == task.output_paths(out) == [out]
    assert np.asarray(Image.open(out)).shape == (SIDE, 3 * SIDE, 3)
    with pytest.raises(MetaINRError, match="own ground truth"):
        task.read(file, reference=file)
    with pytest.raises(MetaINRError, match="unknown views dataset"):
        task.load("sofas", "train")


def test_a_folder_of_scenes_loads_as_a_set_of_objects_with_their_common_views(tmp_path):
    objects = _objects(count=2, views=3, side=8)
    _write_scene(tmp_path / "a", objects, 0)
    _write_scene(tmp_path / "b", objects.select_views(slice(0, 2)), 1)
    (tmp_path / "not-a-scene").mkdir()
    task = ViewsTask(resolution=8)
    loaded = task.load(str(tmp_path), "train")
    assert loaded.images.shape == (2, 2, 8, 8, 3) and (loaded.near, loaded.far) == (2.0, 6.0)
    torch.testing.assert_close(loaded.poses, objects.poses[:, :2])
    torch.testing.assert_close(loaded.images, objects.images[:, :2], atol=1 / 255, rtol=0)
    small = tmp_path / "small"
    _write_scene(small, _objects(count=1, views=1, side=4))
    assert len(task.load(str(tmp_path), "train")) == 3  # resized to the task's resolution: they fit together
    with pytest.raises(MetaINRError, match="differ"):
        nerf_synthetic_objects(tmp_path)  # as they are, 4x4 views do not stack with 8x8 ones


# -- learners ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [
    ("maml", {}), ("maml", {"batching": "vmap"}), ("fomaml", {}), ("metasgd", {}), ("reptile", {}),
    ("reptile", {"policy": "random", "keep_ratio": 0.5}),
    ("gradncp", {"inner_steps": 2}),  # its score perturbs the field's 4 outputs, not the 3 observed colours
])
def test_every_gradient_learner_meta_trains_on_few_view_contexts(name, options):
    task = ViewsTask(resolution=8, rays=8, n_samples=4, inner_views=1)
    batch = task.train_batch(_objects(count=2, views=3, side=8), torch.Generator().manual_seed(0))
    learner = build_learner(_field(width=8, n_freqs=2), name, **options)
    stats, grads = learner.meta_gradient(task, batch)
    assert math.isfinite(float(stats["loss"])) and all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_transinr_meta_gradient_runs_on_a_views_batch():
    task = ViewsTask(resolution=SIDE, rays=24, n_samples=6)
    batch = task.train_batch(_objects(count=2, views=3), torch.Generator().manual_seed(0))
    tokens = task.tokens(batch)
    learner = build_learner(_field(width=16), "transinr", tokens=tokens.shape[1], token_dim=tokens.shape[2],
                            hyper_dim=32, hyper_depth=1, hyper_heads=2, n_groups=8)
    stats, grads = learner.meta_gradient(task, batch)
    assert math.isfinite(float(stats["loss"])) and set(grads) == {n for n, _ in learner.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values()) and grads["pos_embed"].abs().sum() > 0
    init = learner.signal_init(task, task.validation_batches(_objects(count=2, views=3, split="val"))[0])
    assert init["head.weight"].shape[0] == 2  # one field per object


def test_a_short_meta_training_beats_random_init_on_novel_views_of_a_held_out_object():
    # measured here (1 and 2 threads, 16 px, 100 training chairs of 6 views, PE field 3x64, 16 samples,
    # Reptile 8 Adam steps at 1e-2 on 128 rays, 300 outer steps at 3e-3): from ONE view, novel views of
    # 4 held-out chairs after 16 steps of the learned rule 17.98 dB (16.76 before any step) vs 13.94
    # for the best random init (Adam 1e-3 / 5e-3 / 2e-2, best over 0-32 steps); other seeds and
    # settings gave 17.2-17.7 vs 13.9-14.0. The asserted margin is about half the measured 4 dB.
    # One thread: the work is thousands of small ops (4,096 samples per inner step), where a second
    # thread only adds barriers; on this shared 2-core machine under load the test took 15 s on one
    # thread and 318 s on two (the conftest fixture restores the thread count for the next test).
    torch.set_num_threads(1)
    task = ViewsTask(resolution=SIDE, rays=128, n_samples=16)
    train, test = _objects(count=100, views=6), _objects(count=4, views=5, split="test")
    config = FieldConfig(kind="pe", in_dim=3, out_dim=4, width=64, depth=3, n_freqs=4, output_offset=0.0)
    learner = build_learner(build_field(config), "reptile", inner_steps=8, inner_lr=1e-2, inner_optimizer="adam")
    meta_train(learner, task, train, TrainConfig(steps=300, batch_size=2, outer_lr=3e-3), progress=False)
    batch = task.fit_batch(test)
    assert batch.query.shape[1] == SIDE * SIDE  # the fits see one view; metrics score the 4 others
    result = fit(task, learner.field, learner.signal_init(task, batch), batch, 16,
                 **learner.test_rule().fit_options(task, learner.field))
    meta = mean_psnr(result.psnr[:, -1])
    field = build_field(dataclasses.replace(config, seed=1))
    init = {n: p.detach() for n, p in field.named_parameters()}
    random = max(mean_psnr(fit(task, field, init, batch, 32, lr=lr, record=[8, 16, 32]).psnr.max(dim=1).values)
                 for lr in (1e-3, 5e-3, 2e-2))
    assert meta > random + 2.0, (meta, random)


# -- the command line -------------------------------------------------------------------------------
def test_meta_train_then_fit_a_nerf_synthetic_folder_from_the_cli(tmp_path, cli):
    run = tmp_path / "run"
    code, _, err = cli("meta-train", "--task", "views", "--data", "chairs", "--resolution", SIDE, "--views", 3,
                       "--count", 6, "--val-count", 2, "--rays", 32, "--n-samples", 8, "--run", run, "--steps", 3,
                       "--batch-size", 2, "--width", 16, "--depth", 3, "--n-freqs", 3, "--inner-steps", 2,
                       "--eval-steps", 2, "--eval-every", 3)
    assert code == 0, err
    ckpt = run / "checkpoint.safetensors"
    learner, meta = load_learner(ckpt)
    assert meta["task"]["name"] == "views" and learner.name == "reptile" and learner.field.config.kind == "pe"
    assert (meta["task"]["near"], meta["task"]["far"]) == (2.8, 5.2)  # the data's depth range, recorded
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and math.isfinite(records[-1]["val_psnr"])
    file = _write_scene(tmp_path / "scene", box_objects("chairs", "test", 1, 3, SIDE))
    code, out, err = cli("fit", file, "--init", ckpt, "--input-views", 1, "--out", tmp_path / "x.png", "--json",
                         "--record", "0,1")
    assert code == 0, err
    report = json.loads(out)
    assert report["task"] == "views" and report["steps"][-1] == 2 and len(report["psnr"]) == 3
    assert all(math.isfinite(v) for v in report["psnr"]) and report["final_ssim"] is not None
    assert report["outputs"] == [str(tmp_path / "x.png")]
    assert np.asarray(Image.open(tmp_path / "x.png")).shape == (SIDE, 2 * SIDE, 3)  # the two novel views
    code, out, err = cli("fit", tmp_path / "scene", "--init", "random", "--task", "views", "--resolution", SIDE,
                         "--n-samples", 8, "--width", 16, "--steps", 2, "--json")
    assert code == 0, err
    assert json.loads(out)["optimizer"] == "adam" and (tmp_path / "scene.recon.png").is_file()


@pytest.mark.parametrize("change, message", [
    (lambda meta: "{not json", "malformed JSON"),
    (lambda meta: {**meta, "camera_angle_x": 4.0}, "camera_angle_x"),
    (lambda meta: {**meta, "frames": []}, "non-empty list"),
])
def test_a_bad_transforms_file_is_a_one_line_error(tmp_path, cli, change, message):
    file = _write_scene(tmp_path, _objects(count=1, views=2, side=8))
    meta = change(json.loads(file.read_text()))
    file.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    code, out, err = cli("fit", file, "--init", "random", "--task", "views", "--resolution", 8, "--width", 8,
                         "--steps", 1)
    assert code == 1 and out == ""
    assert err.startswith("metainr: error:") and message in err and len(err.strip().splitlines()) == 1, err
