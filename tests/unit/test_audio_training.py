"""train/audio.py and train/synthetic_sounds.py: the generated sounds, training on a user's folder
(--data) and its clear errors."""
import numpy as np
import pytest

from tests.support.harness import load_handler, run_batch, worker_row
from model_defs.audio import AudioPreprocessing, encode_audio
from model_defs.export import load_export
from train.audio import folder_dataset, get_args_parser, main
from train.common import DataError
from train.synthetic_sounds import SOUND_CLASSES, SYNTHETIC_LABELS, generate_clip

PREPROCESSING = AudioPreprocessing()


def test_there_are_at_least_six_sound_classes_with_distinct_names():
    assert len(SYNTHETIC_LABELS) >= 6 and len(set(SYNTHETIC_LABELS)) == len(SYNTHETIC_LABELS)


@pytest.mark.parametrize("class_name", SYNTHETIC_LABELS)
def test_generated_clips_are_seeded_audible_and_within_full_scale(class_name):
    first = generate_clip(class_name, np.random.default_rng(5))
    again = generate_clip(class_name, np.random.default_rng(5))
    other = generate_clip(class_name, np.random.default_rng(6))
    assert first.sample_rate == again.sample_rate and np.array_equal(first.samples, again.samples)
    assert not (first.sample_rate == other.sample_rate and np.array_equal(first.samples, other.samples))
    assert first.samples.dtype == np.float32 and first.samples.ndim == 2
    peak = np.abs(first.samples).max()
    assert 10 ** (-32 / 20) < peak <= 1.0


def test_generated_clips_vary_in_rate_channels_and_length():
    rng = np.random.default_rng(0)
    clips = [generate_clip(sound.name, rng) for sound in SOUND_CLASSES for _ in range(10)]
    assert len({clip.sample_rate for clip in clips}) >= 4
    assert {clip.samples.shape[1] for clip in clips} == {1, 2}
    durations = [len(clip.samples) / clip.sample_rate for clip in clips]
    assert min(durations) < PREPROCESSING.window_seconds < max(durations)  # both padding and cropping are trained


def test_unknown_sound_class_names_the_valid_choices():
    with pytest.raises(ValueError, match="valid choices: tone, chirp_up"):
        generate_clip("birdsong", np.random.default_rng(0))


# ---- --data ----------------------------------------------------------------------------------------------
def write_clip(path, class_name, seed, container="WAV", subtype="PCM_16"):
    clip = generate_clip(class_name, np.random.default_rng(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_audio(clip.samples, clip.sample_rate, container, subtype))


def make_folder(root, per_class=4, classes=("tone", "noise_burst")):
    formats = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("wav", "WAV", "FLOAT")]
    for class_name in classes:
        for index in range(per_class):
            suffix, container, subtype = formats[index % len(formats)]
            write_clip(root / class_name / f"clip{index}.{suffix}", class_name, seed=100 + index, container=container, subtype=subtype)
    return root


def test_a_folder_is_split_per_class_so_every_class_is_evaluated(tmp_path):
    root = make_folder(tmp_path / "data", per_class=5)
    (root / "tone" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are not data
    train_x, train_y, heldout_x, heldout_y, classes = folder_dataset(root, PREPROCESSING, 0.2, seed=0)
    assert classes == ["noise_burst", "tone"]
    assert train_x.shape == (8, PREPROCESSING.window_samples) and heldout_x.shape == (2, PREPROCESSING.window_samples)
    assert sorted(heldout_y.tolist()) == [0, 1] and sorted(train_y.tolist()) == [0] * 4 + [1] * 4


@pytest.mark.parametrize("layout,message", [
    pytest.param({}, "at least 2 classes", id="empty-folder"),
    pytest.param({"tone": 3}, "at least 2 classes", id="one-class"),
    pytest.param({"tone": 3, "chord": 0}, "chord has 0 file(s)", id="empty-class-folder"),
    pytest.param({"tone": 3, "chord": 1}, "chord has 1 file(s); each class needs at least 2", id="one-file-class"),
])
def test_unusable_folders_are_refused_with_the_reason(tmp_path, layout, message):
    root = tmp_path / "data"
    root.mkdir()
    for class_name, count in layout.items():
        (root / class_name).mkdir()
        for index in range(count):
            write_clip(root / class_name / f"{index}.wav", class_name, seed=index)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        folder_dataset(root, PREPROCESSING, 0.2, seed=0)


def test_an_undecodable_file_is_named(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "tone" / "notes.txt").write_text("not audio")
    with pytest.raises(DataError, match=r"cannot use .*tone/notes\.txt: the audio could not be decoded"):
        folder_dataset(root, PREPROCESSING, 0.2, seed=0)


def test_training_on_a_folder_exports_a_model_the_handler_serves(tmp_path, restore_torch_threads):
    root = make_folder(tmp_path / "data", per_class=6, classes=("chirp_up", "pulse_train", "square_wave"))
    out = tmp_path / "export"
    args = get_args_parser().parse_args(["--data", str(root), "--out", str(out), "--epochs", "2", "--batch-size", "8"])
    metrics = main(args)  # 6 clips per class, a fifth held out: 5 to train on and 1 to evaluate, per class

    export = load_export(out)
    assert export.labels == ["chirp_up", "pulse_train", "square_wave"]
    assert export.spec["metrics"]["heldout_accuracy"] == metrics["heldout_accuracy"]
    assert export.spec["metrics"]["heldout_examples"] == 3 and export.spec["metrics"]["data"] == str(root)
    assert set(export.spec["metrics"]["heldout_accuracy_per_class"]) == set(export.labels)

    handler, context = load_handler("audio_classifier_handler", out, "audio_classifier", tmp_dir=tmp_path / "serve")
    (response,) = run_batch(handler, context, [worker_row((root / "chirp_up" / "clip0.wav").read_bytes())])
    assert response.status == 200 and set(response.body) == set(export.labels)
