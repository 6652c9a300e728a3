"""Sample inputs for `make serve`'s curl lines, generated with the same code as the demo data sets,
so each sample's expected answer is known (a star image is a `star`). One sample per modality: a
model's modality comes from its model.json (scripts/model_store.py), never from its name."""
from pathlib import Path
from typing import Dict, Iterable, List

SAMPLE_TEXT = "Hi, my card was charged twice for the same order, can I get a refund?"


def write_samples(directory: Path, modalities: Iterable[str]) -> Dict[str, Path]:
    """modality → its sample file in `directory`, for each of `modalities`."""
    directory.mkdir(parents=True, exist_ok=True)
    modalities = set(modalities)
    files = {}
    if "image" in modalities:
        from train.synthetic_shapes import render_shape

        files["image"] = directory / "star.png"
        render_shape("star", size=128, seed=7).save(files["image"])
    if "text" in modalities:
        files["text"] = directory / "message.txt"
        files["text"].write_text(SAMPLE_TEXT + "\n")
        # Well over the demo model's 128 tokens: its answer says X-Text-Truncated: true.
        (directory / "long_complaint.txt").write_text(" ".join([SAMPLE_TEXT] * 12) + "\n")
    if "audio" in modalities:
        import numpy as np
        import soundfile

        from train.synthetic_sounds import generate_clip

        clip = generate_clip("chirp_up", np.random.default_rng(3), sample_rate=44100, channels=2)
        files["audio"] = directory / "chirp_up.wav"
        soundfile.write(files["audio"], clip.samples, clip.sample_rate)
    return files


def _shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def curl_examples(modality: str, files: Dict[str, Path], url: str, auth: str) -> List[str]:
    """curl lines that send `modality`'s sample (from write_samples) to `url`, in each form it accepts."""
    if modality in ("image", "audio"):
        path = _shown(files[modality])
        return [
            f"curl {auth} {url} -T {path}                              # raw bytes",
            f"curl {auth} {url} -F data=@{path}                        # multipart",
            # JSON goes through stdin: a file's base64 can be longer than one command-line argument may be.
            f"(printf '{{\"data\": \"'; base64 -w0 {path}; printf '\"}}') | curl {auth} {url} -H 'Content-Type: application/json' --data-binary @-   # JSON base64",
        ]
    if modality == "text":
        return [
            f"curl {auth} {url} -H 'Content-Type: text/plain' -d '{SAMPLE_TEXT}'",
            f"curl {auth} {url} -H 'Content-Type: application/json' -d '{{\"text\": \"{SAMPLE_TEXT}\"}}'",
            f"curl {auth} {url} -F 'text={SAMPLE_TEXT}'                 # form field",
            f"curl -i {auth} {url} -H 'Content-Type: text/plain' -d '{SAMPLE_TEXT}'   # -i shows X-Text-Tokens",
        ]
    return []
