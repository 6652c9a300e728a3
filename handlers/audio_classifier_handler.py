"""TorchServe handler for audio_classifier: WAV/FLAC/OGG clip in, top-k sound classes out.

A request carries one audio file as a raw body (curl -T clip.wav), a multipart field
(-F data=@clip.wav) or base64 in JSON ({"data": "<base64>"}). Each clip is decoded, mixed to mono,
resampled and padded or cropped to the model's window by model_defs.audio.prepare_clip (the same
function training used); the batch's windows then go through one batched log-mel and one forward.

Response headers tell how the clip was fitted to the window:
    X-Audio-Window: padded | cropped | exact
    X-Audio-Window-Start: where the window starts in the clip, seconds (the loudest window when cropped)
    X-Audio-Duration: duration of the clip as sent, seconds

Handler settings (configs/audio_classifier.yaml, `handler:`): top_k, max_bytes, max_seconds, precision.
"""
import torch

from handler_common import BatchClassifierHandler, ItemError, binary_content
from model_defs.audio import (
    AudioInputError,
    AudioPreprocessing,
    AudioTooLongError,
    LogMelSpectrogram,
    UnsupportedAudioFormatError,
    prepare_clip,
)

# Problems with the clip's content are 400, except these: a clip longer than max_seconds is too
# large just as a body over max_bytes is, and a format outside the accepted list is a media type
# the server does not take.
_STATUS_BY_ERROR = {AudioTooLongError: 413, UnsupportedAudioFormatError: 415}
JSON_FIELDS = ("data", "audio")
DEFAULT_MAX_SECONDS = 30.0


def format_seconds(seconds: float) -> str:
    """Seconds to microsecond precision without trailing zeros: 2.5 -> "2.5", 1/8000 -> "0.000125"."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


class AudioClassifierHandler(BatchClassifierHandler):
    modality = "audio"
    # 30 s of 48 kHz stereo float WAV is 11.0 MB; the model-config sets the same (and says why).
    default_max_bytes = 11 * 1024 * 1024

    def load_modality(self, export) -> None:
        if self.spec.get("modality") != "audio":
            raise ValueError(f"{export.directory} is a {self.spec.get('modality')!r} export, not an audio one")
        self.preprocessing = AudioPreprocessing.from_dict(self.spec["preprocess"])
        self.feature_extractor = LogMelSpectrogram(self.preprocessing).to(self.device).eval()
        self.max_seconds = float(self.settings.get("max_seconds", DEFAULT_MAX_SECONDS))
        if self.max_seconds <= 0:
            raise ValueError(f"handler.max_seconds must be positive, got {self.max_seconds}")

    def prepare_payload(self, payload, index: int):
        content = binary_content(payload, JSON_FIELDS, self.max_bytes, "audio file")
        try:
            clip = prepare_clip(content, self.preprocessing, self.max_seconds)
        except AudioInputError as error:
            raise ItemError(_STATUS_BY_ERROR.get(type(error), 400), error.error_type, str(error)) from None
        headers = {
            "X-Audio-Window": clip.window_fit,
            "X-Audio-Window-Start": format_seconds(clip.window_start_seconds),
            "X-Audio-Duration": format_seconds(clip.duration_seconds),
        }
        return clip.waveform, headers

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        # One batched log-mel for the whole batch, on the model's device.
        return self.model(self.feature_extractor(waveforms.to(self.device, non_blocking=True)))
