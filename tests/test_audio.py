"""The audio task: time coordinates (GradNCP's scaling), samples observed in [0, 1], PSNR, tokens,
WAV files through the task and the CLI, and a meta-learned init beating a random one."""
import json
import math

import pytest
import torch

from metainr.data.sounds import notes, read_sound, write_wav
from metainr.fields import FieldConfig, build_field
from metainr.metrics import psnr
from metainr.tasks import AudioTask, build_task

from meta_vs_random import meta_and_random_psnr


def test_query_rows_are_scaled_times_and_values_are_samples_in_unit_range():
    waves = torch.tensor([[-1.0, 0.0, 0.5, 1.0, -0.5]])
    task = AudioTask(time_scale=50.0, sample_rate=10)  # half a second: t x 25
    batch = task.batch(waves)
    torch.testing.assert_close(batch.query[:, 0], torch.tensor([-25.0, -12.5, 0.0, 12.5, 25.0]))
    one_second = AudioTask(sample_rate=16000).query(16000)  # GradNCP's LibriSpeech clips: [-50, 50]
    assert float(one_second[0]) == -50.0 and float(one_second[-1]) == 50.0
    torch.testing.assert_close(batch.values[0, :, 0], torch.tensor([0.0, 0.5, 0.75, 1.0, 0.25]))
    assert task.settled(batch).config.length == 5 and task.in_dim == task.out_dim == 1


def test_psnr_is_of_samples_in_unit_range_and_reconstructions_are_waveforms():
    waves = notes("test", 2, 400)
    task = AudioTask()
    batch = task.batch(waves)
    noisy = (waves + 0.02 * torch.randn(2, 400)).clamp(-1, 1)
    fn = lambda p, q: p["v"]  # noqa: E731  a "field" whose values are the noisy sound's
    params = {"v": ((noisy + 1) / 2)[..., None]}
    torch.testing.assert_close(task.metrics(fn, params, batch)["psnr"], psnr((noisy + 1) / 2, (waves + 1) / 2))
    torch.testing.assert_close(task.reconstruct(fn, params, batch), noisy)


def test_tokens_are_consecutive_segments_padded_with_silence():
    waves = torch.linspace(-1, 1, 130)[None].expand(2, -1)
    task = AudioTask()
    tokens = task.tokens(task.batch(waves))
    assert tokens.shape == (2, 44, 3)  # ceil(130 / 64) = 3 samples a token, 44 tokens, the last padded
    torch.testing.assert_close(tokens[0, 1], (waves[0, 3:6] + 1) / 2)
    torch.testing.assert_close(tokens[0, -1], torch.tensor([1.0, 0.5, 0.5]))  # sample 129 (= 1), then silence
    assert AudioTask(segment=10).tokens(task.batch(waves)).shape == (2, 13, 10)


def test_write_then_read_through_the_task_within_16_bit_quantisation(tmp_path):
    wave = notes("test", 1, 800, sample_rate=8000)[0]
    task = AudioTask(sample_rate=8000)
    written = task.write(tmp_path / "s.wav", wave)
    assert written == [tmp_path / "s.wav", tmp_path / "s.png"] and all(p.is_file() for p in written)
    back = task.read(tmp_path / "s.wav").reference[0]
    assert back.shape == wave.shape and float((back - wave).abs().max()) <= 1 / 32767 + 1e-6


def test_config_refuses_bad_values_in_one_line():
    for bad in ({"time_scale": 0.0}, {"time_scale": math.inf}, {"sample_rate": 0}, {"length": -1}):
        with pytest.raises(ValueError):
            AudioTask(**bad)
    assert build_task({"name": "audio", "length": 160, "sample_rate": 8000}).config.length == 160


def test_cli_fits_a_wav_from_random_and_from_a_checkpoint(cli, tmp_path):
    write_wav(tmp_path / "a.wav", notes("test", 1, 1600, sample_rate=8000)[0], 8000)
    code, out, err = cli("fit", tmp_path / "a.wav", "--init", "random", "--task", "audio", "--sample-rate", "8000",
                         "--steps", "5", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["outputs"] == [str(tmp_path / "a.recon.png"), str(tmp_path / "a.recon.wav")]
    assert read_sound(tmp_path / "a.recon.wav", 8000).shape == (1600,)
    run = tmp_path / "run"
    code, _, err = cli("meta-train", "--task", "audio", "--sample-rate", "8000", "--length", "800", "--count", "8",
                       "--val-count", "2", "--width", "16", "--depth", "3", "--steps", "2", "--run", run)
    assert code == 0, err
    code, out, err = cli("fit", tmp_path / "a.wav", "--init", run / "checkpoint.safetensors", "--steps", "2",
                         "--out", tmp_path / "b.wav")
    assert code == 0, err
    assert read_sound(tmp_path / "b.wav", 8000).shape == (800,)  # the checkpoint's length: the file is clipped


def test_learned_init_beats_random_after_two_steps():
    task = AudioTask(length=1000)
    train, batch = notes("train", 64, 1000), task.batch(notes("test", 8, 1000))
    meta, random = meta_and_random_psnr(task, train, batch, lambda seed: build_field(FieldConfig(
        in_dim=1, out_dim=1, width=64, depth=4, seed=seed)), "metasgd", inner_steps=2, inner_lr=1e-2)  # the preset learner
    # measured (1 thread, 100 outer steps, 1,000-sample notes): Meta-SGD 33.5 dB after 2 steps vs the best
    # Adam lr of a random init 19.8 dB (silence's PSNR): a margin of 13.7 dB; about half is asserted
    assert meta > random + 7.0, (meta, random)
