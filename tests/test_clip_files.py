"""Clips: procedural pans, GIF / MP4 / frame-folder reading and writing, and their one-line errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from metainr.data import clips
from metainr.data.clips import (clip_folder, load_clips, pans, read_clip, write_gif, write_mp4, write_strip)
from metainr.errors import MetaINRError
from metainr.limits import use_limits


def _one_line_error(fn, *args, match: str = "", **kwargs) -> str:
    with pytest.raises(MetaINRError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def _grey_clip(t=5, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 1), generator=g).float() / 255


def _write_frames(folder, clip):
    folder.mkdir()
    for i, frame in enumerate((clip.numpy() * 255).round().astype(np.uint8)):
        Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(folder / f"f{i:03d}.png")


def _psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


# ------------------------------------------------------------------------------------------ pans
def test_pans_shape_range_and_determinism():
    a = pans("train", 6, frames=5, height=16, width=24, seed=3)
    assert a.shape == (6, 5, 16, 24, 3) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    assert torch.equal(a, pans("train", 6, frames=5, height=16, width=24, seed=3))
    assert not torch.equal(a, pans("train", 6, frames=5, height=16, width=24, seed=4))
    test = pans("test", 6, frames=5, height=16, width=24, seed=3)
    assert (a - test).abs().mean() > 0.05


def test_pans_move_smoothly_between_frames():
    clip = pans("train", 40, frames=8, height=32, width=32, sprites=False)
    step = (clip[:, 1:] - clip[:, :-1]).abs().mean(dim=(2, 3, 4))      # (n, T-1)
    assert (step > 1e-3).all(), "every clip moves between every pair of frames"
    assert 0.01 < step.mean() < 0.12
    far = (clip[:, 1:] - clip[:, :1]).abs().mean(dim=(2, 3, 4))
    assert far[:, -1].mean() > step[:, 0].mean(), "frames drift further from the first frame"
    # adjacent frames are far more alike than frames of two different clips
    assert step.mean() < 0.5 * (clip[1:, 0] - clip[:-1, 0]).abs().mean()


def test_pans_sprites_are_composited_on_top():
    plain = pans("test", 30, frames=4, height=24, width=24, sprites=False)
    withs = pans("test", 30, frames=4, height=24, width=24, sprites=True)
    changed = ((withs - plain).abs().amax(dim=-1) > 1e-4)
    frac = changed.float().mean(dim=(1, 2, 3))
    assert (frac > 0).any() and (frac == 0).any(), "some clips have sprites, some have none"
    assert frac.max() < 0.5


def test_pans_errors():
    _one_line_error(pans, "val", 2, match="split")
    _one_line_error(pans, "train", 0, match="count")
    with use_limits(max_pixels=1000):
        _one_line_error(pans, "train", 2, 8, 32, 32, match="limit")


def test_pans_400_clips_is_fast():
    import time

    pans("train", 2)  # photos cached
    start = time.perf_counter()
    out = pans("train", 400, 8, 32, 32)
    assert out.shape == (400, 8, 32, 32, 3)
    assert time.perf_counter() - start < 6.0


# ------------------------------------------------------------------------------------------- GIF
def test_gif_round_trip_grey_is_exact_to_8_bits(tmp_path):
    clip = _grey_clip()
    write_gif(tmp_path / "a.gif", clip, fps=10)
    back = read_clip(tmp_path / "a.gif", channels=1)
    assert back.shape == clip.shape
    assert (back - clip).abs().max() <= 1 / 255 + 1e-6
    rgb = read_clip(tmp_path / "a.gif")
    assert rgb.shape == (5, 12, 10, 3) and torch.allclose(rgb[..., 0], rgb[..., 2])
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 5 and im.info["loop"] == 0 and im.info["duration"] == 100


def test_gif_round_trip_few_colours_and_repeated_frames(tmp_path):
    g = torch.Generator().manual_seed(1)
    clip = torch.randint(0, 6, (3, 9, 7, 3), generator=g).float() / 5       # <= 216 colours
    clip = torch.cat([clip, clip[-1:], clip[-1:]])                          # identical frames are kept
    write_gif(tmp_path / "c.gif", clip)
    back = read_clip(tmp_path / "c.gif")
    assert back.shape == clip.shape and (back - clip).abs().max() <= 1 / 255 + 1e-6


def test_gif_of_many_colours_is_close(tmp_path):
    clip = pans("test", 1, 4, 24, 24)[0]
    write_gif(tmp_path / "p.gif", clip)
    back = read_clip(tmp_path / "p.gif")
    assert back.shape == clip.shape and _psnr(back, clip) > 30


def test_frames_height_width_selection(tmp_path):
    clip = pans("train", 1, 6, 20, 30)[0]
    write_gif(tmp_path / "a.gif", clip)
    assert read_clip(tmp_path / "a.gif", frames=4).shape == (4, 20, 30, 3)
    small = read_clip(tmp_path / "a.gif", frames=2, height=10, width=10)
    assert small.shape == (2, 10, 10, 3)
    # cover 10x10: scale by 1/2 to 10x15, crop the centre 10 columns (2..12)
    full = read_clip(tmp_path / "a.gif", frames=2)
    ref = torch.nn.functional.avg_pool2d(full.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)[:, :, 2:12]
    assert (small - ref).abs().mean() < 0.03
    assert read_clip(tmp_path / "a.gif", height=40, width=12, channels=1).shape == (6, 40, 12, 1)
    first = read_clip(tmp_path / "a.gif", frames=1)
    assert torch.equal(first[0], full[0])


def test_fewer_frames_than_asked_names_file_and_counts(tmp_path):
    write_gif(tmp_path / "a.gif", _grey_clip(t=3))
    msg = _one_line_error(read_clip, tmp_path / "a.gif", frames=5)
    assert "a.gif" in msg and "3" in msg and "5" in msg


def test_bad_files_are_one_line_errors(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "corrupt.gif").write_bytes(rng.bytes(400))
    _one_line_error(read_clip, tmp_path / "corrupt.gif", match="corrupt.gif")
    write_gif(tmp_path / "ok.gif", pans("train", 1, 6, 16, 16)[0])
    data = (tmp_path / "ok.gif").read_bytes()
    (tmp_path / "half.gif").write_bytes(data[: len(data) // 2])
    _one_line_error(read_clip, tmp_path / "half.gif", match="half.gif")
    _one_line_error(read_clip, tmp_path / "missing.gif", match="missing.gif")
    (tmp_path / "clip.avi").write_bytes(b"x")
    _one_line_error(read_clip, tmp_path / "clip.avi", match="unknown format")
    Image.new("RGB", (4, 4)).save(tmp_path / "png.gif", format="PNG")
    _one_line_error(read_clip, tmp_path / "png.gif", match="not a GIF")
    (tmp_path / "empty").mkdir()
    _one_line_error(read_clip, tmp_path / "empty", match="empty")
    _one_line_error(read_clip, tmp_path / "ok.gif", height=8, match="height")


def test_clip_over_the_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    write_gif(tmp_path / "a.gif", _grey_clip(t=4, h=20, w=20))
    with use_limits(max_pixels=1000):
        msg = _one_line_error(read_clip, tmp_path / "a.gif", match="limit")
        assert "4 frames of 20x20" in msg
        read_clip(tmp_path / "a.gif", frames=2, channels=1, height=10, width=10)  # 2*20*20 = 800 decoded
        _one_line_error(read_clip, tmp_path / "a.gif", frames=2, channels=1, height=30, width=30, match="resized")


# --------------------------------------------------------------------------------- frame folders
def test_frame_folder_round_trip(tmp_path):
    clip = pans("test", 1, 5, 14, 18)[0]
    _write_frames(tmp_path / "frames", clip)
    back = read_clip(tmp_path / "frames")
    assert back.shape == clip.shape and (back - clip).abs().max() <= 1 / 255 + 1e-6
    assert read_clip(tmp_path / "frames", frames=3, channels=1).shape == (3, 14, 18, 1)


def test_frame_folder_of_differing_sizes_is_refused(tmp_path):
    _write_frames(tmp_path / "frames", _grey_clip(t=3))
    Image.new("L", (11, 12)).save(tmp_path / "frames" / "f002.png")
    msg = _one_line_error(read_clip, tmp_path / "frames", match="f002.png")
    assert "frames" in msg
    assert read_clip(tmp_path / "frames", frames=2).shape == (2, 12, 10, 3)  # only used frames count


def test_clip_folder_and_load_clips(tmp_path):
    a, b = pans("train", 2, 4, 16, 16)
    write_gif(tmp_path / "clips" / "a.gif", a)
    _write_frames(tmp_path / "clips" / "b", b)
    (tmp_path / "clips" / "notes.txt").write_text("ignored")
    stack = clip_folder(tmp_path / "clips", frames=3, height=16, width=16)
    assert stack.shape == (2, 3, 16, 16, 3)
    assert (stack[1] - b[:3]).abs().max() <= 1 / 255 + 1e-6
    assert _psnr(stack[0], a[:3]) > 30
    assert torch.equal(load_clips(str(tmp_path / "clips"), "test", 3, 16, 16, 5, 5), stack)
    assert load_clips(str(tmp_path / "clips" / "b"), "train", 2, 8, 8, 5, 5).shape == (1, 2, 8, 8, 3)
    assert load_clips("pans", "test", 2, 8, 8, count=5, val_count=3).shape == (3, 2, 8, 8, 3)
    with use_limits(max_pixels=2 * 3 * 16 * 16 * 3 - 1):
        _one_line_error(clip_folder, tmp_path / "clips", 3, 16, 16, match="2 clips")
    with use_limits(max_signals=1):
        _one_line_error(clip_folder, tmp_path / "clips", 3, 16, 16, match="signals")
    _one_line_error(clip_folder, tmp_path / "clips", 0, 16, 16, match="frames")
    _one_line_error(clip_folder, tmp_path / "clips", 6, 16, 16, match="fewer")
    _one_line_error(load_clips, str(tmp_path / "nope"), "train", 2, 8, 8, 1, 1, match="nope")


# ------------------------------------------------------------------------------------------- MP4
needs_video = pytest.mark.skipif(clips._video_plugin() is None, reason="no MP4 backend (pip install 'metainr[video]')")


@needs_video
@pytest.mark.parametrize("plugin", ["pyav", "FFMPEG"])
def test_mp4_round_trip(tmp_path, monkeypatch, plugin):
    pytest.importorskip({"pyav": "av", "FFMPEG": "imageio_ffmpeg"}[plugin])  # CI has imageio-ffmpeg only
    monkeypatch.setattr(clips, "_video_plugin", lambda: plugin)
    clip = pans("test", 1, 8, 64, 64, sprites=False)[0]
    write_mp4(tmp_path / "a.mp4", clip, fps=12)
    back = read_clip(tmp_path / "a.mp4")
    assert back.shape == clip.shape and _psnr(back, clip) > 30
    assert read_clip(tmp_path / "a.mp4", frames=3, height=32, width=32).shape == (3, 32, 32, 3)
    write_mp4(tmp_path / "odd.mp4", clip[:4, :31, :29])  # padded to even sides for the codec
    assert read_clip(tmp_path / "odd.mp4").shape == (4, 32, 30, 3)
    _one_line_error(read_clip, tmp_path / "a.mp4", frames=9, match="fewer")
    (tmp_path / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(600))
    _one_line_error(read_clip, tmp_path / "bad.mp4", match="bad.mp4")
    data = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    _one_line_error(read_clip, tmp_path / "half.mp4", match="half.mp4")
    with use_limits(max_pixels=1000):
        _one_line_error(read_clip, tmp_path / "a.mp4", match="limit")


def test_missing_video_backend_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.mp4").write_bytes(b"\0" * 64)
    monkeypatch.setattr(clips, "_video_plugin", lambda: None)
    _one_line_error(read_clip, tmp_path / "a.mp4", match="metainr[video]")
    _one_line_error(write_mp4, tmp_path / "b.mp4", _grey_clip(), match="metainr[video]")
    assert not (tmp_path / "b.mp4").exists()


# ----------------------------------------------------------------------------------------- strip
def test_write_strip_lays_frames_in_rows_of_eight(tmp_path):
    clip = pans("train", 1, 10, 12, 16)[0]
    write_strip(tmp_path / "s.png", clip)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (8 * 16, 2 * 12) and im.mode == "RGB"
        sheet = np.asarray(im)
    assert np.abs(sheet[12:24, 16:32] / 255 - clip[9].numpy()).max() <= 1 / 255
    assert sheet[12:, 32:].max() == 0
    write_strip(tmp_path / "g.png", _grey_clip(t=3))
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (30, 12) and im.mode == "L"
    _one_line_error(write_strip, tmp_path / "x.png", torch.zeros(3, 4, 4, 2), match="C = 1 or 3")
    _one_line_error(write_gif, tmp_path / "x.gif", _grey_clip(), fps=0, match="fps")
