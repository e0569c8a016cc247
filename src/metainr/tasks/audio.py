"""Audio: mono waveforms observed at every sample (the identity forward model).

A sound of L samples (D = L / sample_rate seconds) is a field ``t -> value``: query row i is
``time_scale * D * t_i`` with ``t_i`` evenly over [-1, 1] (endpoints included), and its
observation is the sample mapped to [0, 1], ``(w + 1) / 2`` (:func:`metainr.data.sounds.to_unit`),
as the papers compute PSNR of sounds. The scale follows the GradNCP code for LibriSpeech, which
multiplies the time coordinate of its 1 s clips by 50 (``time_scale``); it is kept per second, so
a coordinate unit is the same 10 ms at every length and an init meta-learned on one length
speaks the same frequencies on another. (Stretching a 0.25 s sound over [-50, 50] instead puts
four times the frequencies on each unit: Meta-SGD, 90-120 CPU-s on 4,000-sample notes, stayed at
about 19 dB after 2 steps, silence's PSNR, and reached 33.5 dB on [-10, 10].) Reconstructions are
waveforms in [-1, 1]. Data: :mod:`metainr.data.sounds`
(``notes``: procedural plucked, bowed, sung notes and chords; WAV / FLAC / OGG files).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..data.images import grid_coords
from ..data.sounds import SAMPLE_RATE, from_unit, load_sounds, read_sound, to_unit, write_sound_plot, write_wav
from ..disk import atomic_group
from ..fields.config import FieldConfig
from ..functional import FieldFn
from ..limits import check_pixels, check_signals
from ..metrics import psnr
from .base import Batch, Preset, Task, observe_batch, register_task

DEFAULT_LENGTH = SAMPLE_RATE
"""samples of a sound when the config leaves it to the data: one second at 16 kHz"""
MAX_TOKENS = 64
"""most segments a hypernetwork reads of one sound"""


@dataclass(frozen=True)
class AudioConfig(Config):
    """Mono sounds of one length at one sample rate."""

    sample_rate: int = SAMPLE_RATE
    """samples a second; files are resampled to it (soxr)"""
    length: int = 0
    """samples a sound (0: those of the data; notes and folders: one second); files are clipped
    to their first ``length`` samples or zero-padded at the end"""
    time_scale: float = 50.0
    """query rows are time_scale x seconds x t, t evenly over [-1, 1] (GradNCP's LibriSpeech scaling of 1 s)"""
    count: int = 400
    """notes: training sounds"""
    val_count: int = 16
    """notes: validation (and test) sounds"""
    segment: int = 0
    """samples a hypernetwork token holds (0: ceil(length / 64), the sound zero-padded at the end)"""

    def __post_init__(self) -> None:
        if self.sample_rate < 1 or self.length < 0 or self.segment < 0:
            raise ValueError(f"need sample_rate >= 1, length >= 0 and segment >= 0, got {self.sample_rate}, "
                             f"{self.length}, {self.segment}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be a positive number, got {self.time_scale}")
        if self.count < 1 or self.val_count < 1:
            raise ValueError(f"count and val_count must be >= 1, got {self.count}, {self.val_count}")
        check_signals(max(self.count, self.val_count), "notes (count)")
        if self.length:  # a length left to the data is checked where a file declares it
            check_pixels(self.length, "a sound of this length")


@register_task
class AudioTask(Task):
    """Sounds ``(n, L)`` in [-1, 1], observed at every sample as values in [0, 1]; PSNR per sound."""

    name = "audio"
    Config = AudioConfig
    # Meta-SGD: 33.5 dB after 2 steps on held-out notes after 90 CPU-s vs MAML's 23.7 (random: 20.2)
    preset = Preset(field=FieldConfig(kind="siren", width=128, depth=4, w0=30.0, w0_first=30.0, output_offset=0.5),
                    learner="metasgd", learner_options={"inner_steps": 2, "inner_lr": 1e-2},
                    train={"outer_lr": 1e-3}, data="notes")

    @property
    def in_dim(self) -> int:
        return 1

    @property
    def out_dim(self) -> int:
        return 1

    def query(self, length: int, device=None, dtype=None) -> Tensor:
        """(L, 1) query rows of a sound of ``length`` samples: time_scale x (length / sample_rate) x t,
        t evenly over [-1, 1]."""
        scale = self.config.time_scale * length / self.config.sample_rate
        return grid_coords(length, device=device, dtype=dtype) * scale

    def batch(self, signals: Tensor) -> Batch:
        """waveforms (B, L) in [-1, 1] -> every sample, observed in [0, 1]; the waveforms are the reference."""
        if signals.dim() != 2:
            raise ValueError(f"sounds must be (B, L), got {tuple(signals.shape)}")
        query = self.query(signals.shape[1], device=signals.device, dtype=signals.dtype)
        return Batch(query, to_unit(signals)[..., None], reference=signals)

    def settled(self, batch: Batch) -> "AudioTask":
        """With ``length`` (when 0) taken from the batch's sounds."""
        return self if self.config.length else type(self)(self.config, length=int(batch.values.shape[1]))

    def metrics(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch,
                names: Sequence[str] = ("psnr",)) -> dict[str, Tensor]:
        """``psnr`` (B,) of the samples mapped to [0, 1]."""
        if "psnr" not in names:
            return {}
        return {"psnr": psnr(observe_batch(self, field_fn, params, batch), batch.values)}

    def reconstruct(self, field_fn: FieldFn, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Waveforms (B, L) in [-1, 1]."""
        return from_unit(observe_batch(self, field_fn, params, batch).clamp(0, 1))[..., 0]

    # -- files -----------------------------------------------------------------------------------
    def load(self, source: str, split: str) -> Tensor:
        """``notes`` (procedural) or a folder of WAV / FLAC / OGG files (or one file) -> (n, L)."""
        c = self.config
        return load_sounds(source, split, c.sample_rate, c.length or DEFAULT_LENGTH, c.count, c.val_count)

    def read(self, path: str | Path, reference: str | Path | None = None) -> Batch:
        """One sound file (resampled to ``sample_rate``; clipped or padded to ``length`` when set)
        as a batch of one (a sound is its own reference: ``reference`` is not used)."""
        return self.batch(read_sound(path, self.config.sample_rate, self.config.length)[None])

    def output_paths(self, path: str | Path) -> list[Path]:
        """``.wav``: that file and a PNG (waveform and spectrogram) beside it; otherwise the PNG at
        ``path`` and the WAV beside it."""
        path = Path(path)
        if path.suffix.lower() == ".wav":
            return [path, path.with_suffix(".png")]
        return [path, path.with_suffix(".wav")]

    def write(self, path: str | Path, signal: Tensor) -> list[Path]:
        """One waveform (L,) in [-1, 1] as a 16-bit WAV and a PNG (:meth:`output_paths`), atomically."""
        wave = signal.detach().float().cpu()
        if wave.dim() != 1:
            raise ValueError(f"a sound to write must be (L,), got {tuple(signal.shape)}")
        paths = self.output_paths(path)
        with atomic_group():  # both files or neither
            for p in paths:
                if p.suffix.lower() == ".wav":
                    write_wav(p, wave, self.config.sample_rate)
                else:
                    write_sound_plot(p, wave, self.config.sample_rate)
        return paths

    # -- capability: tokens (1D segments) ------------------------------------------------------------
    def segment_length(self, length: int) -> int:
        """Samples a token holds for sounds of ``length`` samples."""
        return self.config.segment or -(-length // MAX_TOKENS)

    def tokens(self, batch: Batch) -> Tensor:
        """Sounds (B, L) -> consecutive segments (B, ceil(L / s), s) of their values in [0, 1], the
        last zero-padded (silence, 0.5)."""
        values = batch.values[..., 0]
        s = self.segment_length(values.shape[1])
        pad = -values.shape[1] % s
        return F.pad(values, (0, pad), value=0.5).reshape(values.shape[0], -1, s)
