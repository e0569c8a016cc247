"""The video task and the NeRV field: coordinate conventions of both row layouts, NeRV's shapes and
gradients (finite differences), GradNCP keeping whole frames, per-frame metrics, files, tokens,
the CLI, and a meta-learned init beating a random one."""
import json

import pytest
import torch
from torch.func import functional_call

from metainr import build_learner
from metainr.data.clips import pans, read_clip, write_gif
from metainr.fields import FieldConfig, NeRV, build_field, count_parameters
from metainr.fields.mlp import declared_size
from metainr.meta.context import closed_form_scores, select_context
from metainr.metrics import psnr
from metainr.tasks import ImageTask, VideoTask, field_dims, for_field

from meta_vs_random import meta_and_random_psnr


def _clips(n=2, t=4, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, side, side, 3, generator=g)


def _nerv(task, width=8, depth=4, **kw):
    return NeRV(FieldConfig(kind="nerv", **field_dims(task), width=width, depth=depth, n_freqs=3, **kw))


def _frames_task(clips):
    task = VideoTask(rows="frames")
    return task.settled(task.batch(clips))


# -- coordinates and rows ---------------------------------------------------------------------------
def test_pixel_rows_are_t_y_x_row_major_over_minus_one_to_one():
    clips = _clips(1, 3, 4)
    batch = VideoTask().batch(clips)
    assert batch.query.shape == (3 * 4 * 4, 3) and batch.values.shape == (1, 48, 3)
    torch.testing.assert_close(batch.query[0], torch.tensor([-1.0, -1.0, -1.0]))
    torch.testing.assert_close(batch.query[-1], torch.tensor([1.0, 1.0, 1.0]))
    # row (t=1, y=2, x=3): t in the middle, y at 1/3, x at the right edge
    torch.testing.assert_close(batch.query[1 * 16 + 2 * 4 + 3], torch.tensor([0.0, 1 / 3, 1.0]))
    torch.testing.assert_close(batch.values[0, 1 * 16 + 2 * 4 + 3], clips[0, 1, 2, 3])


def test_frame_rows_are_one_time_per_frame_and_the_whole_frame():
    clips = _clips(2, 5, 4)
    task = _frames_task(clips)
    batch = task.batch(clips)
    assert task.in_dim == 1 and task.out_dim == 4 * 4 * 3 and task.frame_shape() == (4, 4)
    torch.testing.assert_close(batch.query[:, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(batch.values[1, 3], clips[1, 3].reshape(-1))


def test_frame_rows_need_a_frame_size_and_a_frame_valued_field():
    with pytest.raises(ValueError, match="resolution"):
        VideoTask(rows="frames").out_dim
    task = _frames_task(_clips())
    with pytest.raises(ValueError, match="frame-valued"):
        for_field(task, "siren")
    with pytest.raises(ValueError, match="frames as rows"):
        for_field(ImageTask(), "nerv")
    assert for_field(VideoTask(), "nerv").config.rows == "frames" and for_field(VideoTask(), "pe").in_dim == 3


# -- NeRV ---------------------------------------------------------------------------------------------
def test_nerv_maps_times_to_whole_frames_and_declares_its_size():
    task = _frames_task(_clips(1, 4, 16))
    for extra in ({}, {"rwf": True}, {"sparse": True}):
        field = _nerv(task, **extra)
        out, h = field(torch.linspace(-1, 1, 4)[:, None], return_features=True)
        assert out.shape == (4, 16 * 16 * 3) and h.shape == (4, 16 * 16, 8)
        assert declared_size(field.config) == count_parameters(field) + sum(b.numel() for b in field.buffers())
    with pytest.raises(ValueError, match="divide by 4"):
        build_field(FieldConfig(kind="nerv", in_dim=1, out_dim=6 * 6 * 3, frame_height=6, frame_width=6, depth=4))


def test_nerv_gradients_match_finite_differences():
    task = _frames_task(_clips(1, 3, 8))
    field = _nerv(task, width=4, depth=3).double()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in field.named_parameters()}
    t = torch.tensor([[-0.3], [0.4]], dtype=torch.float64, requires_grad=True)
    names = ["stem.1.weight", "blocks.0.weight", "head.bias"]

    def fn(x, *chosen):
        return functional_call(field, {**params, **dict(zip(names, chosen))}, (x,))

    assert torch.autograd.gradcheck(fn, (t, *[params[n] for n in names]), eps=1e-6, atol=1e-5)


def test_gradncp_scores_whole_frames_exactly():
    """The closed-form score of a frame is the norm of its loss's gradient with respect to the head."""
    clips = _clips(1, 6, 8).double()
    task = _frames_task(clips)
    field = _nerv(task).double()
    batch = task.batch(clips)
    params = dict(field.named_parameters())
    scores = closed_form_scores(field, params, batch.query, batch.values[0])
    assert scores.shape == (6,)
    for i in range(6):
        loss = 0.5 * (functional_call(field, params, (batch.query[i:i + 1],)) - batch.values[0, i]).pow(2).sum()
        gw, gb = torch.autograd.grad(loss, [params["head.weight"], params["head.bias"]])
        torch.testing.assert_close(scores[i], (gw.pow(2).sum() + gb.pow(2).sum()).sqrt())
    kept = select_context(scores, 0.5)
    assert sorted(kept.tolist()) == sorted(torch.topk(scores, 3).indices.tolist())  # 3 of 6 whole frames


def test_gradncp_meta_trains_nerv_on_frame_contexts():
    clips = pans("train", 6, 4, 8, 8)
    task = _frames_task(clips)
    learner = build_learner(_nerv(task), "gradncp", inner_steps=2, keep_ratio=0.5)
    stats, grads = learner.meta_gradient(task, task.batch(clips[:2]))
    assert torch.isfinite(stats["loss"]) and all(torch.isfinite(g).all() for g in grads.values())


# -- metrics, tokens, render, files -------------------------------------------------------------------
def test_psnr_is_the_mean_of_per_frame_psnrs():
    clips = _clips(2, 3, 12)
    task = VideoTask()
    batch = task.batch(clips)
    noisy = (clips + 0.05 * _clips(2, 3, 12, seed=1)).clamp(0, 1)
    fn = lambda p, q: p["v"]  # noqa: E731  a "field" whose values are the noisy clip's
    out = task.metrics(fn, {"v": noisy.reshape(2, -1, 3)}, batch, ("psnr", "ssim"))
    manual = torch.stack([psnr(noisy[b], clips[b]).mean() for b in range(2)])
    torch.testing.assert_close(out["psnr"], manual)
    assert out["ssim"].shape == (2,) and (out["ssim"] < 1).all()


def test_tokens_are_spatio_temporal_patches():
    clips = _clips(2, 8, 16)
    task = VideoTask()
    tokens = task.tokens(task.batch(clips))
    assert tokens.shape == (2, 4 * 8 * 8, 2 * 2 * 2 * 3)  # 2 frames x 2 x 2 pixels, 4 x 8 x 8 of them
    torch.testing.assert_close(tokens[0, 0], clips[0, :2, :2, :2].reshape(-1))
    torch.testing.assert_close(tokens[1, 8 * 8 + 1], clips[1, 2:4, :2, 2:4].reshape(-1))


def test_render_evaluates_the_field_at_any_times():
    task = VideoTask(resolution=4)
    fn = lambda p, q: (q[..., :1] + 1).expand(-1, 3) / 2  # noqa: E731  value = (t + 1) / 2
    frames = task.render(fn, {"w": torch.zeros(1)}, 5)
    assert frames.shape == (5, 4, 4, 3)
    torch.testing.assert_close(frames[:, 0, 0, 0], torch.linspace(0, 1, 5))


def test_write_and_read_a_gif_round_trip(tmp_path):
    clip = torch.linspace(0, 1, 4 * 8 * 8).reshape(4, 8, 8, 1).expand(-1, -1, -1, 3).contiguous()
    task = VideoTask()
    written = task.write(tmp_path / "c.gif", clip)
    assert written == [tmp_path / "c.gif", tmp_path / "c.png"] and all(p.is_file() for p in written)
    back = task.read(tmp_path / "c.gif").reference[0]
    assert back.shape == clip.shape and (back - clip).abs().max() <= 1 / 255 + 1e-6


# -- CLI and behaviour --------------------------------------------------------------------------------
def test_cli_meta_trains_nerv_and_fits_renders_a_gif(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("meta-train", "--task", "video", "--field", "nerv", "--width", "8", "--depth", "4",
                       "--frames", "4", "--resolution", "8", "--count", "8", "--val-count", "2", "--steps", "2",
                       "--run", run)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["task"]["rows"] == "frames" and config["field"]["frame_height"] == 8
    write_gif(tmp_path / "clip.gif", pans("test", 1, 6, 12, 12)[0])
    code, out, err = cli("fit", tmp_path / "clip.gif", "--init", run / "checkpoint.safetensors", "--steps", "2",
                         "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outputs"] == [str(tmp_path / "clip.recon.png"), str(tmp_path / "clip.recon.gif")]
    assert read_clip(tmp_path / "clip.recon.gif").shape == (4, 8, 8, 3)  # the checkpoint's frames and size
    code, _, err = cli("fit", tmp_path / "clip.gif", "--init", "random", "--task", "video", "--steps", "3",
                       "--save-field", tmp_path / "f.safetensors", "--out", tmp_path / "r.gif")
    assert code == 0, err
    code, _, err = cli("render", tmp_path / "f.safetensors", "--views", "3")
    assert code == 0, err and (tmp_path / "f.turntable.png").is_file()


def test_learned_init_beats_random_after_two_steps():
    task = VideoTask(frames=4, resolution=12)
    train, batch = pans("train", 64, 4, 12, 12), task.batch(pans("test", 8, 4, 12, 12))
    meta, random = meta_and_random_psnr(task, train, batch, lambda seed: build_field(FieldConfig(
        in_dim=3, out_dim=3, width=64, depth=4, seed=seed)), "metasgd", inner_steps=2, inner_lr=1e-2)  # the preset learner
    # measured (1 thread, 100 outer steps, 4x12x12 pans): Meta-SGD 24.6 dB after 2 steps vs the best Adam lr
    # of a random init 18.1 dB: a margin of 6.5 dB; about half is asserted
    assert meta > random + 3.0, (meta, random)
