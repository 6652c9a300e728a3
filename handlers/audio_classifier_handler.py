"""TorchServe handler for audio_classifier: WAV/FLAC/OGG clip in, top-k sound classes out.

A request carries one audio file as a raw body (curl -T clip.wav), a multipart field
(-F data=@clip.wav) or base64 in JSON ({"data": "<base64>"}). Each clip is decoded, mixed to mono,
resampled and padded or cropped to the model's window by model_defs.audio.prepare_clip (the same
function training used); the batch's windows then go through one batched log-mel and one forward.

Response headers tell how the clip was fitted to the window:
    X-Audio-Window: padded | cropped | exact
    X-Audio-Window-Start: where the window starts in the clip, seconds (the loudest window when cropped)
    X-Audio-Duration: duration of the clip as sent, seconds

Explanations (/explanations/audio_classifier) attribute the log-mel features the model sees, against
the log-mel of silence, and answer the importance per time frame and per mel band, with the frame
hop in seconds (add X-Audio-Window-Start to place a frame in the clip), plus a PNG of the
spectrogram with the attributions over it on request (`visualize=true`).

Handler settings (configs/audio_classifier.yaml, `handler:`): AudioSettings below.
"""
import torch

from explanations import AttributionInput, new_figure, png_base64, round_floats

from batch_handler import BatchClassifierHandler, HandlerSettings
from handler_settings import setting
from item_errors import ItemError
from request_payloads import binary_content
from model_defs.audio import (
    AudioInputError,
    AudioPreprocessing,
    AudioTooLongError,
    UnsupportedAudioFormatError,
    front_end,
    prepare_clip,
)

# Problems with the clip's content are 400, except these: a clip longer than max_seconds is too
# large just as a body over max_bytes is, and a format outside the accepted list is a media type
# the server does not take.
_STATUS_BY_ERROR = {AudioTooLongError: 413, UnsupportedAudioFormatError: 415}

AudioSettings = HandlerSettings.extend(
    "AudioSettings",
    # 30 s of 48 kHz stereo float WAV is 11.0 MB; the model-config sets the same (and says why).
    max_bytes=setting(11 * 1024 * 1024, minimum=1),
    # Longer clips are refused (413) from the file header, before decoding.
    max_seconds=setting(30.0, minimum=1e-3),
)


def format_seconds(seconds: float) -> str:
    """Seconds to microsecond precision without trailing zeros: 2.5 -> "2.5", 1/8000 -> "0.000125"."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".")


class AudioClassifierHandler(BatchClassifierHandler):
    modality = "audio"
    settings_class = AudioSettings
    json_fields = ("data", "audio")

    def load_modality(self, export) -> None:
        self.preprocessing = AudioPreprocessing.from_dict(self.spec["preprocess"])
        # The log-mel, or nothing for an ONNX graph with the log-mel inside it, which takes the waveforms.
        self.feature_extractor = front_end(self.spec).to(self.device).eval()

    def item_from_content(self, content, index: int):
        encoded = binary_content(content, self.json_fields, self.settings.max_bytes, "audio file")
        try:
            clip = prepare_clip(encoded, self.preprocessing, self.settings.max_seconds)
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

    def attribution_input(self, batch, position):
        # Attributed on the log-mel features, not the raw samples: frames and bands are what a person
        # can read, and silence (the log-mel of zeros) is the natural "no evidence" baseline.
        waveform = batch.inputs[position:position + 1].to(self.device)
        with torch.no_grad():
            features = self.feature_extractor(waveform)
            silence = self.feature_extractor(torch.zeros_like(waveform))
        return AttributionInput(features, silence, self.model)

    def explanation_fields(self, attributions, source, batch, position, options):
        per_cell = attributions[0, 0]  # [n_mels, frames]
        hop_seconds = self.preprocessing.hop_length / self.preprocessing.sample_rate
        fields = {
            "frame_hop_seconds": hop_seconds,
            "frames": round_floats(per_cell.sum(dim=0)),     # importance of each time frame, over all bands
            "mel_bands": round_floats(per_cell.sum(dim=1)),  # importance of each mel band, low to high
        }
        if options.visualize:
            fields["spectrogram_png"] = self.spectrogram_png(source.inputs[0, 0], per_cell, hop_seconds)
        return fields

    @staticmethod
    def spectrogram_png(log_mel: torch.Tensor, attributions: torch.Tensor, hop_seconds: float) -> str:
        """The log-mel spectrogram in grey, with the attributions over it (red: for, blue: against)."""
        figure = new_figure(8, 3.5)
        axis = figure.subplots()
        extent = (0.0, log_mel.shape[1] * hop_seconds, 0, log_mel.shape[0])
        axis.imshow(log_mel.cpu().numpy(), origin="lower", aspect="auto", cmap="gray", extent=extent)
        limit = float(attributions.abs().max()) or 1.0
        overlay = axis.imshow(attributions.cpu().numpy(), origin="lower", aspect="auto", cmap="bwr", alpha=0.55,
                              vmin=-limit, vmax=limit, extent=extent)
        figure.colorbar(overlay, ax=axis, label="attribution")
        axis.set_xlabel("seconds into the window")
        axis.set_ylabel("mel band")
        axis.set_title("log-mel spectrogram and attributions")
        return png_base64(figure)
