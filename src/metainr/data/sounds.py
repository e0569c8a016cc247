"""Sounds: procedural musical notes (``notes``), users' WAV / FLAC / OGG files and folders of them,
and the WAV and plot writers of reconstructions.

A sound is a mono waveform (L,) of float32 samples in [-1, 1] at ``sample_rate`` Hz (16 kHz by
default). A file is decoded with soundfile, averaged over its channels and resampled to
``sample_rate`` with soxr (a maintained resampler, quality 'HQ'); then it is clipped to its first
``length`` samples, or zero-padded at the end to ``length`` (``length`` 0 keeps the whole file).
The sizes a file declares (frames x channels, the resampled length) are checked against
``max_pixels`` (:mod:`metainr.limits`) before anything is decoded. PSNR maps waveforms to [0, 1]
with :func:`to_unit`, as the papers do.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MetaINRError, not_found
from ..limits import check_pixels, check_signals
from .files import folder_files, one_line_reason

SAMPLE_RATE = 16000
SOUND_SUFFIXES = (".wav", ".flac", ".ogg")
SPLITS = ("train", "test")
SOUND_HINT = "reading and writing sounds needs soundfile and soxr: pip install soundfile soxr"
MIN_RATE = 2000
"""lowest rate of procedural notes: every fundamental (at most 880 Hz) stays under 0.45 x the rate"""

# pitches: the notes of the C major (A minor) scale from A2 to A5 (MIDI 45..81)
_SCALE = [m for m in range(45, 82) if m % 12 in (0, 2, 4, 5, 7, 9, 11)]
_CHORD_STEPS = (0, 2, 4, 7)  # a diatonic triad and its octave, in scale steps
_VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
"""formants F1, F2, F3 (Hz) of /a/, /e/, /i/, /o/, /u/ (Peterson & Barney's averages)"""
_PARTIALS = 32  # most partials of one note (vowels; strings use 20)
_CHUNK = 1 << 22  # most values (notes x partials x samples) rendered at once


# -- procedural notes -----------------------------------------------------------------------------
def _uniform(g: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


def _notes_of(kind: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(signal index, MIDI pitch, kind) of every note: one per pluck (0), bow (1) or vowel (2),
    2-4 of a diatonic chord played by one of them for a chord (3)."""
    n = len(kind)
    scale = torch.tensor(_SCALE, dtype=torch.float64)
    low = sum(m <= 69 for m in _SCALE)  # vowels are sung: A2..A4
    single = torch.where(kind == 2, torch.randint(0, low, (n,), generator=g),
                         torch.randint(0, len(_SCALE), (n,), generator=g))
    root = torch.randint(0, len(_SCALE) - _CHORD_STEPS[-1], (n,), generator=g)
    size = torch.where(kind == 3, torch.randint(2, 5, (n,), generator=g), torch.ones(n, dtype=torch.long))
    voice = torch.where(kind == 3, torch.randint(0, 3, (n,), generator=g), kind)
    sig = torch.repeat_interleave(torch.arange(n), size)
    rank = torch.arange(len(sig)) - torch.repeat_interleave(size.cumsum(0) - size, size)
    step = torch.tensor(_CHORD_STEPS)[rank]
    index = torch.where(kind[sig] == 3, root[sig] + step, single[sig])
    voice = voice[sig]
    pitch = scale[index]
    pitch = torch.where((voice == 2) & (pitch > 69), pitch - 12, pitch)  # a sung chord note an octave down
    return sig, pitch, voice


def _partials(voice: Tensor, f0: Tensor, g: torch.Generator, sample_rate: int) -> tuple[Tensor, Tensor, Tensor]:
    """(frequency ratios, amplitudes, decay rates in 1/s), each (N, K), of every note's partials."""
    n, k = len(voice), torch.arange(1, _PARTIALS + 1, dtype=torch.float64)[None]
    pluck, bow, vowel = voice == 0, voice == 1, voice == 2
    # strings: stiffness stretches the partials; a pluck at p along the string weights them |sin(pi k p)| / k^1.5
    stiff = torch.where(pluck[:, None], _uniform(g, (n, 1), 2e-5, 3e-4), 0.0)  # bows and voices: periodic
    ratios = k * torch.sqrt((1 + stiff * k**2) / (1 + stiff))
    where = _uniform(g, (n, 1), 0.08, 0.3)
    plucked = (torch.sin(math.pi * k * where).abs() + 0.05) / k**1.5
    bowed = torch.exp(-(k - 1) / _uniform(g, (n, 1), 3, 12)) / k  # a sawtooth with a rolloff
    # voices: a glottal source (1/k^1.5) through three formant resonances
    formants = torch.tensor(_VOWELS, dtype=torch.float64)[torch.randint(0, len(_VOWELS), (n,), generator=g)]
    formants = formants * _uniform(g, (n, 3), 0.92, 1.08)
    width = _uniform(g, (n, 3), 60, 140) * torch.tensor([1.0, 1.3, 1.8], dtype=torch.float64)
    freq = (f0[:, None] * k)[:, :, None]
    peaks = 1 / (1 + ((freq - formants[:, None]) / (width[:, None] / 2)) ** 2)
    voiced = (peaks * torch.tensor([1.0, 0.6, 0.35], dtype=torch.float64)).sum(-1) / k**0.5 + 0.01 / k**1.5
    amps = torch.where(pluck[:, None], plucked, torch.where(bow[:, None], bowed, voiced))
    amps = amps * torch.exp(0.25 * torch.randn((n, _PARTIALS), generator=g, dtype=torch.float64))
    amps = torch.where(~vowel[:, None] & (k > 20), 0.0, amps)  # strings: 20 partials
    amps = torch.where(f0[:, None] * ratios >= 0.45 * sample_rate, 0.0, amps)  # no aliases
    amps = amps / amps.sum(1, keepdim=True).clamp(min=1e-12)
    # a pluck dies away, its high partials first (t60 0.4-2.5 s); bows and voices are held
    decay = 6.9 / _uniform(g, (n, 1), 0.4, 2.5) * (1 + _uniform(g, (n, 1), 0.05, 0.4) * (k - 1))
    return ratios, amps, torch.where(pluck[:, None], decay, 0.0)


def _envelopes(voice: Tensor, sig: Tensor, count: int, g: torch.Generator, seconds: float) -> tuple[Tensor, ...]:
    """(attack, hold, release) in seconds and vibrato (rate Hz, depth, phase) of every note (N,)
    of ``count`` sounds (``sig``: the sound of each note)."""
    n = len(voice)
    pluck = voice == 0
    attack = torch.where(pluck, _uniform(g, (n,), 0.001, 0.005), _uniform(g, (n,), 0.04, 0.2).clamp(max=0.3 * seconds))
    hold = torch.where(pluck, math.inf, _uniform(g, (count,), 0.55, 0.9)[sig] * seconds)  # a chord's notes end together
    release = _uniform(g, (n,), 0.05, 0.3).clamp(max=max(0.1 * seconds, 1e-3))
    rate = _uniform(g, (n,), 4, 7)
    depth = torch.where(pluck, 0.0, torch.where(voice == 1, _uniform(g, (n,), 0.002, 0.007),
                                                _uniform(g, (n,), 0.004, 0.012)))
    return attack, hold, release, rate, depth, _uniform(g, (n,), 0, 2 * math.pi)


def _smooth(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def _additive(cycles: Tensor, tn: Tensor, ratios: Tensor, amps: Tensor, phase: Tensor, decay: Tensor) -> Tensor:
    """(m, L) sums of decaying partials sin(2 pi r_k cycles + phase_k) a_k exp(-decay_k tn)."""
    used = (amps > 0).any(0)
    used = int(used.nonzero().max()) + 1 if bool(used.any()) else 1  # notes of a chunk share their top partial
    r, a, p, d = (x[:, :used, None].float() for x in (ratios, amps, phase, decay))
    wave = torch.addcmul(p, r, (2 * math.pi * cycles).float()[:, None]).sin_()  # (m, K, L)
    wave.mul_(torch.addcmul(torch.log(a), d, tn[:, None], value=-1).exp_())
    return wave.sum(1)


_TABLE = 2048


def _wavetable(cycles: Tensor, tn: Tensor, ratios: Tensor, amps: Tensor, phase: Tensor, decay: Tensor) -> Tensor:
    """(m, L) harmonic notes (ratios 1, 2, 3.., no decay) read from one period of each, linearly
    interpolated: the cost is per sample, not per partial."""
    k = torch.arange(1, ratios.shape[1] + 1, dtype=torch.float64)
    x = torch.arange(_TABLE, dtype=torch.float64) * (2 * math.pi / _TABLE)
    table = torch.einsum("mk,mkx->mx", amps, torch.sin(k[None, :, None] * x + phase[:, :, None])).float()
    table = torch.cat([table, table[:, :1]], 1)  # (m, T + 1): the wrap for interpolation
    pos = (cycles - cycles.floor()) * _TABLE
    index = pos.long().clamp(max=_TABLE - 1)
    frac = (pos - index).float()
    left, right = table.gather(1, index), table.gather(1, index + 1)
    return torch.lerp(left, right, frac)


def notes(split: str, count: int, length: int, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> Tensor:
    """(count, length) float32 waveforms in [-1, 1] of musical notes at ``sample_rate`` Hz,
    deterministic in ``seed``; ``train`` and ``test`` come from different seeds.

    Each sound is, with equal odds, a plucked string (stretched partials that die away, the high
    ones first), a bowed note (attack, sustain with 4-7 Hz vibrato, release; a sawtooth-like
    spectrum with a rolloff), a sung vowel (a glottal source through the formants of /a e i o u/,
    with vibrato) or a chord of 2-4 notes of one of them (plucks strummed). Pitches are notes of
    the C major scale from A2 to A5 (MIDI 45..81); partials at or over 0.45 x ``sample_rate``
    are left out. Each sound's peak is a random 0.5..0.9.
    """
    if split not in SPLITS:
        raise MetaINRError(f"split of notes must be 'train' or 'test', got {split!r}")
    if count < 1 or length < 1:
        raise MetaINRError(f"notes need a count and a length of at least 1, got {count} and {length}")
    if sample_rate < MIN_RATE:
        raise MetaINRError(f"notes need a sample rate of at least {MIN_RATE} Hz, got {sample_rate}")
    check_signals(count, "notes (count)")
    check_pixels(length, f"notes ({length} samples each)")
    g = torch.Generator().manual_seed(seed * 7919 + SPLITS.index(split))
    kind = torch.randint(0, 4, (count,), generator=g)
    sig, pitch, voice = _notes_of(kind, g)
    n = len(sig)
    f0 = 440.0 * 2 ** ((pitch - 69) / 12) * _uniform(g, (n,), 0.997, 1.003)  # slightly out of tune
    ratios, amps, decay = _partials(voice, f0, g, sample_rate)
    phase0 = _uniform(g, (n, _PARTIALS), 0, 2 * math.pi)
    attack, hold, release, rate, depth, vib_phase = _envelopes(voice, sig, count, g, length / sample_rate)
    strum = torch.where(voice == 0, _uniform(g, (n,), 0, 0.03), _uniform(g, (n,), 0, 0.01))
    onset = torch.where(kind[sig] == 3, strum, 0.0) + _uniform(g, (n,), 0, 0.02)
    onset = torch.minimum(onset, torch.full((n,), length / (4 * sample_rate)))
    loud = _uniform(g, (n,), 0.6, 1.0)
    gain = _uniform(g, (count,), 0.5, 0.9).float()

    t = torch.arange(length, dtype=torch.float64) / sample_rate
    out = torch.zeros(count, length, dtype=torch.float32)
    onset, attack, hold, release, rate, depth, vib_phase, loud = (
        x.float() for x in (onset, attack, hold, release, rate, depth, vib_phase, loud))
    held = voice != 0
    order = torch.argsort(f0 + 1e5 * held, stable=True)  # plucks then held notes, each by pitch
    plucks = int((~held).sum())
    for group, render, width in ((order[:plucks], _additive, _PARTIALS), (order[plucks:], _wavetable, 8)):
        step = max(1, _CHUNK // (width * length))  # values held at once: about _CHUNK
        for start in range(0, len(group), step):
            i = group[start:start + step]
            since = t[None] - onset[i, None]  # (m, L) seconds since the onset (negative before it)
            tn = since.clamp(min=0).float()
            vib = depth[i, None] * _smooth(tn / 0.4) * torch.sin(2 * math.pi * rate[i, None] * tn + vib_phase[i, None])
            cycles = torch.cumsum(f0[i, None] * (1 + vib), 1) / sample_rate  # (m, L) periods, float64
            env = _smooth(tn / attack[i, None]) * (1 - _smooth((tn - hold[i, None]) / release[i, None]))
            env = env * (since >= 0) * loud[i, None]
            wave = render(cycles, tn, ratios[i], amps[i], phase0[i], decay[i])
            out.index_add_(0, sig[i], wave * env)
    peak = out.abs().amax(1, keepdim=True).clamp(min=1e-8)
    return (out * (gain[:, None] / peak)).clamp(-1, 1)


# -- users' sound files ---------------------------------------------------------------------------
def _audio_modules():
    try:
        import soundfile
        import soxr
    except ImportError:
        raise MetaINRError(SOUND_HINT) from None
    return soundfile, soxr


def read_sound(path: str | Path, sample_rate: int = SAMPLE_RATE, length: int = 0) -> Tensor:
    """One WAV / FLAC / OGG file (or any format libsndfile reads) as a mono (L,) float32 waveform
    in [-1, 1] at ``sample_rate``: channels averaged, resampled with soxr 'HQ', then clipped to
    its first ``length`` samples or zero-padded at the end (``length`` 0: L is the file's length
    at ``sample_rate``). Only the frames needed are decoded, after their count (frames x
    channels) and the resampled length are checked against ``max_pixels``. Every failure is a
    one-line :class:`MetaINRError` naming the file."""
    soundfile, soxr = _audio_modules()
    file = Path(path)
    if sample_rate < 1 or length < 0:
        raise MetaINRError(f"cannot read sound {file}: need a sample rate >= 1 and a length >= 0, "
                           f"got {sample_rate} and {length}")
    if not file.is_file():
        raise not_found(file, "sound file")
    if length:
        check_pixels(length, f"sound {file} (length {length})")
    try:
        info = soundfile.info(str(file))
        frames, channels, rate = int(info.frames), int(info.channels), int(info.samplerate)
        if rate <= 0 or channels <= 0:
            raise ValueError(f"it declares {channels} channels at {rate} Hz")
        if frames <= 0:
            raise ValueError("it holds no samples")
        if length:  # the frames of the first `length` samples, and the resampling filter's reach past them
            margin = 0 if rate == sample_rate else 256 * math.ceil(rate / sample_rate)
            frames = min(frames, math.ceil(length * rate / sample_rate) + margin)
        check_pixels(frames * channels, f"sound {file} ({frames} frames x {channels} channels)")
        check_pixels(math.ceil(frames * sample_rate / rate), f"sound {file} resampled from {rate} to {sample_rate} Hz")
        data = soundfile.read(str(file), frames=frames, dtype="float32", always_2d=True)[0]
        if data.shape[0] == 0:
            raise ValueError("it holds no samples")
        wave = data.mean(axis=1, dtype=np.float32)
        if not np.isfinite(wave).all():
            raise MetaINRError(f"sound {file} holds NaN or infinite samples")
        if rate != sample_rate:
            wave = soxr.resample(wave, rate, sample_rate, quality="HQ")
    except MetaINRError:
        raise
    except (RuntimeError, ValueError, OSError, EOFError, TypeError) as exc:  # LibsndfileError is a RuntimeError
        raise MetaINRError(f"cannot read sound {file}: {one_line_reason(exc)}") from None
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    if length:
        wave = np.pad(wave[:length], (0, max(0, length - len(wave))))
    return torch.from_numpy(np.ascontiguousarray(wave))


def sound_folder(folder: str | Path, sample_rate: int = SAMPLE_RATE, length: int = SAMPLE_RATE) -> Tensor:
    """(n, length) waveforms of every .wav / .flac / .ogg file of ``folder`` (sorted by name), each
    read with :func:`read_sound` (clipped or zero-padded to ``length`` >= 1). The whole folder's
    samples (n x length) are checked against ``max_pixels`` before any file is read."""
    if length < 1:
        raise MetaINRError(f"sounds of a folder need a length of at least 1 sample, got {length}")
    files = folder_files(folder, SOUND_SUFFIXES, "sounds")
    check_pixels(len(files) * length, f"folder {folder} ({len(files)} sounds x {length} samples)")
    return torch.stack([read_sound(f, sample_rate, length) for f in files])


def load_sounds(source: str, split: str, sample_rate: int = SAMPLE_RATE, length: int = SAMPLE_RATE,
                count: int = 400, val_count: int = 16) -> Tensor:
    """(n, length) waveforms of ``source`` for ``split``: ``notes``: ``count`` (train) or
    ``val_count`` (test) procedural notes; a folder: all its sounds; a file: that one sound
    (1, length). A folder or a file serves every split."""
    if source == "notes":
        return notes(split, count if split == "train" else val_count, length, sample_rate)
    path = Path(source)
    if path.is_dir():
        return sound_folder(path, sample_rate, length)
    if path.is_file():
        if length < 1:
            raise MetaINRError(f"sounds need a length of at least 1 sample, got {length}")
        return read_sound(path, sample_rate, length)[None]
    raise MetaINRError(f"dataset not found: {source!r} is neither 'notes' nor a sound file or folder")


def to_unit(wave: Tensor) -> Tensor:
    """Waveform values in [-1, 1] -> [0, 1], ``(w + 1) / 2`` (any shape): what PSNR of sounds is of."""
    return (wave + 1) / 2


def from_unit(values: Tensor) -> Tensor:
    """The inverse of :func:`to_unit`: values in [0, 1] -> waveform values in [-1, 1], ``2 v - 1``."""
    return values * 2 - 1


# -- writers --------------------------------------------------------------------------------------
def _mono(wave: Tensor | np.ndarray) -> np.ndarray:
    """(L,) float32 numpy samples of a tensor or array, NaN as 0 and infinities as +-1."""
    if isinstance(wave, Tensor):
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"a waveform must be (L,), got shape {wave.shape}")
    return np.nan_to_num(wave, posinf=1.0, neginf=-1.0)  # a diverged reconstruction is still written


def write_wav(path: str | Path, wave: Tensor | np.ndarray, sample_rate: int) -> None:
    """A waveform (L,) in [-1, 1] (clamped) as a 16-bit PCM mono WAV, written atomically."""
    from ..disk import atomic_write_bytes

    soundfile, _ = _audio_modules()
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(_mono(wave), -1, 1), int(sample_rate), format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())


def write_sound_plot(path: str | Path, wave: Tensor | np.ndarray, sample_rate: int,
                     reference: Tensor | np.ndarray | None = None) -> None:
    """A PNG of a waveform (L,): the wave over time on top (``reference`` (L',), faint, behind it)
    and its log-magnitude spectrogram (dB) below, written atomically."""
    from matplotlib.figure import Figure
    from scipy.signal import stft

    from ..disk import atomic_write_bytes

    wave = _mono(wave)
    fig = Figure(figsize=(8, 5), dpi=100)
    top, bottom = fig.subplots(2, 1)
    if reference is not None:
        ref = _mono(reference)
        top.plot(np.arange(len(ref)) / sample_rate, ref, color="0.6", alpha=0.5, lw=0.6, label="reference")
    top.plot(np.arange(len(wave)) / sample_rate, wave, color="C0", lw=0.6, label="sound")
    top.set(xlim=(0, max(len(wave), 1) / sample_rate), ylim=(-1.05, 1.05), xlabel="time (s)", ylabel="amplitude")
    if reference is not None:
        top.legend(loc="upper right", fontsize="small")
    padded = np.pad(wave.astype(np.float64), (0, max(0, 2 - len(wave))))
    freqs, times, spec = stft(padded, fs=sample_rate, nperseg=min(512, len(padded)))
    db = 20 * np.log10(np.abs(spec) + 1e-6)
    mesh = bottom.pcolormesh(times, freqs, db, shading="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max())
    bottom.set(xlim=top.get_xlim(), xlabel="time (s)", ylabel="frequency (Hz)")
    fig.colorbar(mesh, ax=bottom, label="dB")
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.09, top=0.97, hspace=0.4)  # tight_layout draws twice
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
