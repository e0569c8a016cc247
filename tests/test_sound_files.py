"""Sounds: procedural notes, reading users' WAV / FLAC files (mono, resampling, length), the
one-line errors of bad files and sizes over the limits, and the WAV / plot writers."""
import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from metainr.data.sounds import (SAMPLE_RATE, from_unit, load_sounds, notes, read_sound,  # noqa: E402
                                 sound_folder, to_unit, write_sound_plot, write_wav)
from metainr.errors import MetaINRError  # noqa: E402
from metainr.limits import use_limits  # noqa: E402

SCALE_HZ = 440.0 * 2 ** ((np.array([m for m in range(45, 82) if m % 12 in (0, 2, 4, 5, 7, 9, 11)]) - 69) / 12)


def _sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def _one_line_error(call) -> str:
    with pytest.raises(MetaINRError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


# -- procedural notes -----------------------------------------------------------------------------
def test_notes_shape_range_and_deterministic():
    x = notes("train", 24, 8000)
    assert x.shape == (24, 8000) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0
    peaks = x.abs().amax(1)
    assert (peaks > 0.45).all() and (peaks < 0.95).all()  # not silent: peak-normalised to 0.5..0.9
    assert torch.equal(x, notes("train", 24, 8000))
    assert not torch.allclose(x, notes("test", 24, 8000))
    assert not torch.allclose(x, notes("train", 24, 8000, seed=1))
    assert torch.cdist(x, x).fill_diagonal_(1e9).min() > 1.0  # every sound differs from every other


def test_notes_are_tonal_and_pitched_at_scale_notes():
    x = notes("train", 48, SAMPLE_RATE).double().numpy()
    power = np.abs(np.fft.rfft(x * np.hanning(x.shape[1]), axis=1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[1], 1 / SAMPLE_RATE)
    flatness = np.exp(np.log(power[:, 1:] + 1e-30).mean(1)) / power[:, 1:].mean(1)
    assert flatness.max() < 1e-3  # white noise: about 0.56; harmonic sounds: almost all energy in few bins

    def harmonic_energy(f0: float) -> np.ndarray:  # energy within 1% of the first 8 harmonics of f0
        return sum(power[:, np.abs(freqs - k * f0) <= 0.01 * k * f0].sum(1) for k in range(1, 9))

    on = np.max([harmonic_energy(f) for f in SCALE_HZ], axis=0)
    off = np.max([harmonic_energy(f * 2 ** (1 / 24)) for f in SCALE_HZ], axis=0)  # a quarter tone sharp
    assert (on > off).all() and np.median(on / off) > 10


def test_notes_other_rates_and_bad_options():
    x = notes("test", 4, 4000, sample_rate=8000)
    assert x.shape == (4, 4000) and (x.abs().amax(1) > 0.45).all()
    assert "split" in _one_line_error(lambda: notes("val", 4, 100))
    _one_line_error(lambda: notes("train", 0, 100))
    _one_line_error(lambda: notes("train", 4, 100, sample_rate=1000))
    with use_limits(max_pixels=100):
        _one_line_error(lambda: notes("train", 2, 101))
    with use_limits(max_signals=3):
        _one_line_error(lambda: notes("train", 4, 100))


def test_unit_map_round_trip():
    w = torch.linspace(-1, 1, 11)
    assert torch.allclose(to_unit(w), (w + 1) / 2) and to_unit(w).min() == 0 and to_unit(w).max() == 1
    assert torch.allclose(from_unit(to_unit(w)), w, atol=1e-6)


# -- reading files --------------------------------------------------------------------------------
def test_wav_round_trip_within_16_bit(tmp_path):
    wave = notes("train", 1, 3000)[0]
    path = tmp_path / "a.wav"
    write_wav(path, wave, SAMPLE_RATE)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (SAMPLE_RATE, 1, 3000, "PCM_16")
    back = read_sound(path)
    assert back.shape == (3000,) and back.dtype == torch.float32
    assert torch.allclose(back, wave, atol=1 / 32767 + 1e-6, rtol=0)
    write_wav(path, np.array([2.0, -3.0, 0.5]), SAMPLE_RATE)  # clamped, and replaced atomically
    assert torch.allclose(read_sound(path), torch.tensor([1.0, -1.0, 0.5]), atol=1 / 32767 + 1e-6)


def test_flac_reads_back(tmp_path):
    wave = _sine(330, SAMPLE_RATE, 0.25)
    soundfile.write(str(tmp_path / "b.flac"), wave, SAMPLE_RATE, subtype="PCM_24")
    back = read_sound(tmp_path / "b.flac")
    assert back.shape == (4000,) and np.allclose(back.numpy(), wave, atol=1e-6)


def test_resampling_keeps_the_pitch(tmp_path):
    soundfile.write(str(tmp_path / "sine8k.wav"), _sine(440, 8000, 1.0), 8000, subtype="FLOAT")
    wave = read_sound(tmp_path / "sine8k.wav", sample_rate=16000).numpy()
    assert len(wave) == 16000
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak = np.fft.rfftfreq(len(wave), 1 / 16000)[spectrum.argmax()]
    assert abs(peak - 440) <= 2
    assert abs(np.abs(wave[2000:-2000]).max() - 0.5) < 0.01  # the amplitude survives too


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = _sine(220, SAMPLE_RATE, 0.1), _sine(550, SAMPLE_RATE, 0.1)
    soundfile.write(str(tmp_path / "st.wav"), np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    back = read_sound(tmp_path / "st.wav")
    assert back.shape == (1600,) and np.allclose(back.numpy(), (left + right) / 2, atol=1e-6)


def test_length_clips_the_start_and_pads_the_end(tmp_path):
    wave = _sine(440, SAMPLE_RATE, 0.1)
    soundfile.write(str(tmp_path / "s.wav"), wave, SAMPLE_RATE, subtype="FLOAT")
    short = read_sound(tmp_path / "s.wav", length=500)
    assert short.shape == (500,) and np.allclose(short.numpy(), wave[:500])
    long = read_sound(tmp_path / "s.wav", length=2000)
    assert long.shape == (2000,) and np.allclose(long[:1600].numpy(), wave) and (long[1600:] == 0).all()
    # clipping after resampling decodes a prefix but gives the samples the whole file gives
    soundfile.write(str(tmp_path / "s44.wav"), _sine(440, 44100, 1.0), 44100, subtype="FLOAT")
    whole = read_sound(tmp_path / "s44.wav")
    assert whole.shape == (16000,)
    assert torch.allclose(read_sound(tmp_path / "s44.wav", length=1000), whole[:1000], atol=1e-6)


def test_out_of_range_samples_are_clipped(tmp_path):
    soundfile.write(str(tmp_path / "loud.wav"), np.array([0.0, 1.5, -2.0, 0.25], np.float32), SAMPLE_RATE,
                    subtype="FLOAT")
    assert torch.equal(read_sound(tmp_path / "loud.wav"), torch.tensor([0.0, 1.0, -1.0, 0.25]))


def test_bad_files_are_one_line_errors(tmp_path):
    corrupt = tmp_path / "noise.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "noise.wav" in _one_line_error(lambda: read_sound(corrupt))
    assert "missing.wav" in _one_line_error(lambda: read_sound(tmp_path / "missing.wav"))
    soundfile.write(str(tmp_path / "nan.wav"), np.array([0.0, np.nan, 0.1], np.float32), SAMPLE_RATE, subtype="FLOAT")
    assert "NaN" in _one_line_error(lambda: read_sound(tmp_path / "nan.wav"))
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, np.float32), SAMPLE_RATE)
    assert "no samples" in _one_line_error(lambda: read_sound(empty))
    truncated = tmp_path / "cut.flac"
    soundfile.write(str(truncated), _sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE)
    truncated.write_bytes(truncated.read_bytes()[:200])
    try:
        out = read_sound(truncated)  # libsndfile may decode what is there ...
        assert torch.isfinite(out).all()
    except MetaINRError as exc:  # ... or refuse: either way never another exception
        assert "\n" not in str(exc)


def test_sizes_over_the_limit_are_refused_before_reading(tmp_path):
    soundfile.write(str(tmp_path / "big.wav"), _sine(440, 8000, 0.02, channels=2), 8000)  # 160 frames x 2
    with use_limits(max_pixels=100):
        message = _one_line_error(lambda: read_sound(tmp_path / "big.wav"))
        assert "big.wav" in message and "max-pixels" in message
        _one_line_error(lambda: read_sound(tmp_path / "big.wav", length=101))  # the padded output too
        assert read_sound(tmp_path / "big.wav", sample_rate=8000, length=40).shape == (40,)  # only a prefix decoded
    with use_limits(max_pixels=200):  # 160 mono frames at 8 kHz are 320 samples at 16 kHz
        soundfile.write(str(tmp_path / "mono.wav"), _sine(440, 8000, 0.02), 8000)
        assert "resampled" in _one_line_error(lambda: read_sound(tmp_path / "mono.wav", sample_rate=16000))


# -- folders and datasets -------------------------------------------------------------------------
def test_sound_folder_shape_and_whole_folder_limit(tmp_path):
    for i, ext in enumerate(("wav", "flac", "ogg")):
        soundfile.write(str(tmp_path / f"{i}.{ext}"), _sine(220 * (i + 1), SAMPLE_RATE, 0.05 * (i + 1)), SAMPLE_RATE)
    (tmp_path / "notes.txt").write_text("not a sound")
    sounds = sound_folder(tmp_path, length=1200)
    assert sounds.shape == (3, 1200) and sounds.dtype == torch.float32
    assert (sounds[0, 800:] == 0).all() and sounds[2].abs().max() > 0.4
    with use_limits(max_pixels=3000):  # each sound is under the limit, the folder is not
        assert "folder" in _one_line_error(lambda: sound_folder(tmp_path, length=1200))
    _one_line_error(lambda: sound_folder(tmp_path, length=0))
    _one_line_error(lambda: sound_folder(tmp_path / "nothing"))
    assert torch.equal(load_sounds(str(tmp_path), "test", SAMPLE_RATE, 1200, 5, 2), sounds)
    assert load_sounds(str(tmp_path / "0.wav"), "train", SAMPLE_RATE, 1200, 5, 2).shape == (1, 1200)


def test_load_sounds_notes_counts_per_split():
    assert load_sounds("notes", "train", 8000, 800, 5, 2).shape == (5, 800)
    assert load_sounds("notes", "test", 8000, 800, 5, 2).shape == (2, 800)
    assert "notes" in _one_line_error(lambda: load_sounds("no/such/dir", "train", 8000, 800, 5, 2))


# -- writers --------------------------------------------------------------------------------------
def test_write_sound_plot_is_a_png(tmp_path):
    wave = notes("train", 2, 4000)
    write_sound_plot(tmp_path / "plot.png", wave[0], SAMPLE_RATE, reference=wave[1].numpy())
    write_sound_plot(tmp_path / "short.png", np.zeros(3), SAMPLE_RATE)
    for name in ("plot.png", "short.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
