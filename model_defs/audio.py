"""Audio: decoding, the fixed-window log-mel front end, and the CNN that classifies it.

One definition of the path from file bytes to model input, used by train/audio.py (synthetic clips
are encoded to WAV and decoded back through it; `--data` files go through it as they are) and by
handlers/audio_classifier_handler.py:

    bytes ──decode_audio──> mono float32 at the file's rate ──resample──> model rate
          ──fit_to_window──> exactly `window_samples` ──LogMelSpectrogram (batched)──> CNN

Window policy (reported per request in the X-Audio-* response headers):
  * shorter clips are padded with silence at the end, so the sound keeps its onset at t=0;
  * longer clips are cropped to their loudest window (highest energy), because a recording of a
    sound event is usually mostly silence or background around the event: a centre crop can miss a
    short event entirely, the energy maximum finds it, and it costs one cumulative sum.

Decoding uses soundfile (libsndfile), never torchaudio.load, which needs torchcodec.
"""
import functools
import io
import math
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
import torchaudio
from torch import nn

from .registry import register

# Containers accepted (libsndfile's names). WAV covers its PCM 8/16/24/32-bit, float, A-law and
# µ-law subtypes; WAVEX, RF64 and W64 are WAV with a larger header. OGG carries Vorbis (or Opus).
# Other formats libsndfile could open (MP3, AIFF, raw ...) are refused with the list, not guessed at.
ACCEPTED_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG")

# Bounds that keep one request's memory and CPU small whatever the file claims: decoding keeps only
# the mono mixdown (at most max_seconds * MAX_SAMPLE_RATE float32 samples, 46 MB for 30 s), read in
# blocks of at most _DECODE_BLOCK_SAMPLES samples across all channels.
MAX_SAMPLE_RATE = 384_000
_DECODE_BLOCK_SAMPLES = 1 << 20

# Float files are expected in [-1, 1]. A little over full scale is normal (clipped masters,
# inter-sample peaks); samples far beyond it are integer PCM stored as float and would put the
# features far outside anything the model was trained on.
MAX_ABS_FLOAT_SAMPLE = 16.0

# torchaudio's sinc resampler builds a kernel of about (new/gcd) x (orig/gcd) taps: for 44.1 kHz -> 16 kHz
# that is 160 x 441, but an odd rate such as 44101 Hz has gcd 1 and would need 16000 x 44101 (2.8 GB).
# The ratio is therefore approximated by the nearest fraction with terms <= this bound; standard
# rates (8k, 11.025k, 22.05k, 44.1k, 48k, 96k ...) stay exact, odd rates are off by at most 0.05%
# (under one cent of pitch).
_MAX_RESAMPLE_RATIO_TERM = 1000


# ---- errors: one class per problem, so a handler can map each to a status and a message ----------
class AudioInputError(ValueError):
    """The bytes are not a usable audio clip; `error_type` names the problem for API clients."""

    error_type = "InvalidAudio"


class UndecodableAudioError(AudioInputError):
    error_type = "UndecodableAudio"


class UnsupportedAudioFormatError(AudioInputError):
    error_type = "UnsupportedAudioFormat"


class UnsupportedSampleRateError(AudioInputError):
    error_type = "UnsupportedSampleRate"


class EmptyAudioError(AudioInputError):
    error_type = "EmptyAudio"


class NonFiniteSamplesError(AudioInputError):
    error_type = "NonFiniteSamples"


class SamplesOutOfRangeError(AudioInputError):
    error_type = "SamplesOutOfRange"


class AudioTooLongError(AudioInputError):
    error_type = "AudioTooLong"


# ---- preprocessing parameters, as recorded in model.json -----------------------------------------
@dataclass(frozen=True)
class AudioPreprocessing:
    """Everything that turns a clip into model input. Stored in model.json's "preprocess"."""

    sample_rate: int = 16_000
    window_seconds: float = 1.0
    # 40 bands (as in keyword spotting) resolve these sounds; more bands cost CNN time, not accuracy.
    n_mels: int = 40
    # 512-point FFT over 25 ms windows every 10 ms: 31 Hz bins are fine enough that none of the
    # mel filters up to 8 kHz is empty (a unit test checks that no filter is all zero).
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 0.0
    f_max: Optional[float] = None  # None: the Nyquist frequency
    # log(mel power + floor): digital silence maps to log(1e-6) instead of -inf; a full-scale sine
    # has mel power around 1e4, so the floor sits about 100 dB below it.
    log_floor: float = 1e-6
    window_policy: str = "pad-end,crop-loudest"

    def __post_init__(self):
        if self.window_policy != "pad-end,crop-loudest":
            raise ValueError(f"unknown window_policy {self.window_policy!r}; valid choices: 'pad-end,crop-loudest'")
        if self.window_samples < self.n_fft:
            raise ValueError(f"window of {self.window_samples} samples is shorter than n_fft={self.n_fft}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        return self.window_samples // self.hop_length + 1  # MelSpectrogram pads by n_fft // 2 (center=True)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AudioPreprocessing":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown audio preprocessing parameters {unknown}; valid: {sorted(known)}")
        return cls(**values)


# ---- decoding ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodedAudio:
    samples: torch.Tensor  # [frames] float32, mono (channels averaged), at sample_rate
    sample_rate: int
    channels: int
    format: str   # libsndfile's container name, e.g. "WAV", "FLAC", "OGG"
    subtype: str  # e.g. "PCM_16", "FLOAT", "VORBIS"

    @property
    def duration_seconds(self) -> float:
        return self.samples.numel() / self.sample_rate


def _libsndfile_message(error: Exception) -> str:
    # LibsndfileError's str() starts with the repr of our BytesIO; its error_string is the reason.
    return getattr(error, "error_string", None) or str(error)


def decode_audio(content: bytes, max_seconds: Optional[float] = None) -> DecodedAudio:
    """Decode WAV/FLAC/OGG bytes and mix them down to mono, refusing clips longer than max_seconds.

    The duration is checked from the header before any samples are decoded, and decoding never
    reads more than max_seconds worth of frames, so a header that lies cannot make it read more.
    """
    try:
        sound_file = soundfile.SoundFile(io.BytesIO(content))
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as error:
        raise UndecodableAudioError(
            f"the audio could not be decoded: {_libsndfile_message(error)} "
            f"(accepted formats: {', '.join(ACCEPTED_FORMATS)})"
        ) from None
    with sound_file:
        sample_rate, channels = sound_file.samplerate, sound_file.channels
        container, subtype = sound_file.format, sound_file.subtype
        if container not in ACCEPTED_FORMATS:
            raise UnsupportedAudioFormatError(
                f"{container} audio is not accepted; accepted formats: {', '.join(ACCEPTED_FORMATS)}"
            )
        if not 1 <= sample_rate <= MAX_SAMPLE_RATE:
            raise UnsupportedSampleRateError(
                f"the sample rate is {sample_rate} Hz; accepted: 1 to {MAX_SAMPLE_RATE} Hz"
            )
        max_frames = None if max_seconds is None else int(math.floor(max_seconds * sample_rate))
        if max_frames is not None and sound_file.frames > max_frames:
            raise AudioTooLongError(
                f"the audio is {sound_file.frames / sample_rate:.2f} s long, over the limit of {max_seconds:g} s"
            )
        mono = _read_mono(sound_file, channels, frames_to_read=None if max_frames is None else max_frames + 1)
    if max_frames is not None and mono.size > max_frames:  # the header under-reported the length
        raise AudioTooLongError(f"the audio is over the limit of {max_seconds:g} s")
    if mono.size == 0:
        raise EmptyAudioError("the audio has no samples (0 frames)")
    return DecodedAudio(torch.from_numpy(mono), sample_rate, channels, container, subtype)


def _read_mono(sound_file: soundfile.SoundFile, channels: int, frames_to_read: Optional[int]) -> np.ndarray:
    """Read in blocks and keep only the channel average, so memory does not grow with channel count."""
    block_frames = max(1024, _DECODE_BLOCK_SAMPLES // channels)
    blocks = []
    remaining = frames_to_read
    while remaining is None or remaining > 0:
        wanted = block_frames if remaining is None else min(block_frames, remaining)
        try:
            block = sound_file.read(wanted, dtype="float32", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError) as error:
            raise UndecodableAudioError(f"the audio is corrupt: {_libsndfile_message(error)}") from None
        if len(block) == 0:
            break
        _check_samples(block, sound_file.subtype)
        # float64 accumulation: summing channels of large float samples must not overflow to inf.
        blocks.append(block.mean(axis=1, dtype=np.float64).astype(np.float32))
        if remaining is not None:
            remaining -= len(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _check_samples(block: np.ndarray, subtype: str) -> None:
    if not np.isfinite(block).all():
        raise NonFiniteSamplesError("the audio contains NaN or infinite samples")
    peak = float(np.abs(block).max())
    if peak > MAX_ABS_FLOAT_SAMPLE:
        raise SamplesOutOfRangeError(
            f"{subtype} samples reach {peak:g}; float audio must lie within [-1, 1] "
            f"(values this large are usually integer PCM stored as float)"
        )


# ---- resampling and the fixed window ---------------------------------------------------------------
def resampling_ratio(source_rate: int, target_rate: int) -> Tuple[int, int]:
    """(orig, new) integers for torchaudio's resampler: exactly target/source when its reduced
    terms are small, else the nearest fraction whose terms stay <= _MAX_RESAMPLE_RATIO_TERM."""
    ratio = Fraction(target_rate, source_rate)
    if ratio <= 1:
        ratio = ratio.limit_denominator(_MAX_RESAMPLE_RATIO_TERM)
    else:
        ratio = 1 / Fraction(source_rate, target_rate).limit_denominator(_MAX_RESAMPLE_RATIO_TERM)
    return ratio.denominator, ratio.numerator


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    # Building the sinc kernel costs far more than applying it (about 190 ms vs 1 ms for
    # 44.1 kHz -> 16 kHz), and uploads come at a handful of rates: keep the kernels of recent ones.
    # Outside inference mode even when first asked for inside it, so the cached kernel can serve
    # any later caller.
    with torch.inference_mode(False):
        return torchaudio.transforms.Resample(orig, new)


def resample(samples: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    if source_rate == target_rate:
        return samples
    return _resampler(*resampling_ratio(source_rate, target_rate))(samples)


WINDOW_PADDED, WINDOW_CROPPED, WINDOW_EXACT = "padded", "cropped", "exact"


def fit_to_window(samples: torch.Tensor, window_samples: int) -> Tuple[torch.Tensor, str, int]:
    """(window, how it was fitted, start sample): zero-pad at the end, or crop to the loudest window."""
    length = samples.numel()
    if length == window_samples:
        return samples, WINDOW_EXACT, 0
    if length < window_samples:
        return torch.nn.functional.pad(samples, (0, window_samples - length)), WINDOW_PADDED, 0
    # Energy of every window from one cumulative sum of squares (float64: 30 s of samples summed).
    cumulative = torch.cumsum(samples.double() ** 2, dim=0)
    cumulative = torch.cat([cumulative.new_zeros(1), cumulative])
    window_energy = cumulative[window_samples:] - cumulative[:-window_samples]
    start = int(torch.argmax(window_energy))
    return samples[start:start + window_samples].clone(), WINDOW_CROPPED, start


@dataclass(frozen=True)
class PreparedClip:
    waveform: torch.Tensor  # [window_samples] float32, mono, at the model's sample rate
    window_fit: str         # WINDOW_PADDED | WINDOW_CROPPED | WINDOW_EXACT
    window_start_seconds: float
    duration_seconds: float  # of the decoded clip, before padding or cropping
    source: DecodedAudio


def prepare_clip(content: bytes, preprocessing: AudioPreprocessing, max_seconds: Optional[float] = None) -> PreparedClip:
    """File bytes → the model's fixed window: decode, mono, resample, pad or crop."""
    decoded = decode_audio(content, max_seconds)
    samples = resample(decoded.samples, decoded.sample_rate, preprocessing.sample_rate)
    waveform, window_fit, start = fit_to_window(samples, preprocessing.window_samples)
    return PreparedClip(
        waveform=waveform.contiguous(),
        window_fit=window_fit,
        window_start_seconds=start / preprocessing.sample_rate,
        duration_seconds=decoded.duration_seconds,
        source=decoded,
    )


def encode_audio(samples: np.ndarray, sample_rate: int, format: str = "WAV", subtype: Optional[str] = None) -> bytes:
    """In-memory file bytes of samples shaped [frames] or [frames, channels] (subtype None: the format's default)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=format, subtype=subtype)
    return buffer.getvalue()


# ---- features --------------------------------------------------------------------------------------
class LogMelSpectrogram(nn.Module):
    """[batch, window_samples] waveforms → [batch, 1, n_mels, frames] log-mel power, in one batched call."""

    def __init__(self, preprocessing: AudioPreprocessing):
        super().__init__()
        self.log_floor = preprocessing.log_floor
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=preprocessing.sample_rate,
            n_fft=preprocessing.n_fft,
            win_length=preprocessing.win_length,
            hop_length=preprocessing.hop_length,
            f_min=preprocessing.f_min,
            f_max=preprocessing.f_max,
            n_mels=preprocessing.n_mels,
            power=2.0,
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # Features stay float32 even under autocast: the STFT and the log of small powers lose too
        # much in fp16/bf16, and they are a small share of the work.
        with torch.autocast(waveforms.device.type, enabled=False):
            mel = self.mel(waveforms.float())
        return torch.log(mel + self.log_floor).unsqueeze(1)


def front_end(spec: dict) -> nn.Module:
    """What turns a batch of prepared waveforms into the input of an export's model (`spec`, its
    model.json): the log-mel front end, or nothing for a graph that has it inside (an ONNX graph that
    takes waveforms: model_defs/onnx_export.py writes them, train/import_model.py imports them)."""
    if (spec.get("onnx") or {}).get("front_end") == "log_mel":
        return nn.Identity()
    return LogMelSpectrogram(AudioPreprocessing.from_dict(spec["preprocess"]))


# ---- the model -------------------------------------------------------------------------------------
def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),  # ceil: a short window shrinks to 1 frame, never to 0
    )


@register("log_mel_cnn")
class LogMelCNN(nn.Module):
    """A small VGG-style CNN over a log-mel spectrogram [batch, 1, n_mels, frames] → class logits.

    Five conv blocks, each halving frequency and time, give a receptive field of about 0.9 s: wide
    enough to tell a slow sweep from a steady tone, which four blocks (0.45 s) confused.

    Each mel band is first normalised over batch and time (BatchNorm1d over bands), which makes the
    network indifferent to the overall level of each band, as per-band mean/variance normalisation
    of features does. After the convolutions, frequency is averaged and time is pooled both by
    mean and by max (as PANNs do): the mean describes sounds that fill the window, the max keeps a
    short event from being diluted by the silence padded around it. Any number of frames works.
    """

    def __init__(self, n_mels: int, num_classes: int, channels: Sequence[int] = (8, 16, 32, 64, 64), dropout: float = 0.1):
        super().__init__()
        self.n_mels = n_mels
        self.band_norm = nn.BatchNorm1d(n_mels)
        widths = [1, *channels]
        self.features = nn.Sequential(*(_conv_block(c_in, c_out) for c_in, c_out in zip(widths, widths[1:])))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * widths[-1], num_classes))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        if log_mel.dim() != 4 or log_mel.shape[1] != 1 or log_mel.shape[2] != self.n_mels:
            raise ValueError(f"expected log-mel input [batch, 1, {self.n_mels}, frames], got {list(log_mel.shape)}")
        x = self.band_norm(log_mel.squeeze(1)).unsqueeze(1)
        over_time = self.features(x).mean(dim=2)  # [batch, channels, frames]
        pooled = torch.cat([over_time.mean(dim=2), over_time.amax(dim=2)], dim=1)
        return self.classifier(pooled)
