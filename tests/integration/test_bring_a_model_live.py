"""Bringing a trained model, live: docs/bring-a-model.md's worked examples run as printed, one per form
(plain, checkpoint, Lightning-prefixed, safetensors, pickled, TorchScript, fixed-batch ONNX, a text and an
audio model, and a fine-tuned export), then archive.sh packs them with the default model-configs and a
TorchServe of this module's own serves them: each answer's probabilities equal the user's original
module's on the same input, within 1e-5 (ONNX Runtime 1e-4).

Decisions, and why:

- The page's blocks are the round trips' first half: what the reader runs is what is tested, and a form
  whose example leaves the page fails here by name (IMPORTED lists what the page must produce).
- The blocks run in a sandbox shaped like a checkout (the code copied, .venv and the demo exports
  linked), so that `exports/...`, `./archive.sh` and `--out exports/...` work as printed and write
  nothing into the real checkout. The page's scratch folder, /tmp/bring-a-model, is the reader's as
  printed; it is emptied first.
- The docs' own live test (tests/integration/test_docs_live.py, on 8080-8082) skips these blocks: its
  server loads only the demo exports. Here the curl block runs against this module's server, with the
  printed address replaced by its free one and $INFERENCE_KEY from its key_file.json.
- The original module of every image form is the demo image model as a torchvision ResNet
  (tests/support/user_models.py): trained weights, whose probabilities are far from uniform, so a
  preprocessing or label slip cannot hide inside the tolerance.
"""
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import pytest
import torch

from doc_pages import blocks
from scripts import samples
from scripts.local_torchserve import REPO_ROOT
from tests.support import user_models as users

PAGE = REPO_ROOT / "docs" / "bring-a-model.md"
RUN_HERE = "tests/integration/test_bring_a_model_live.py"  # the skip reason of the blocks this test runs
SCRATCH = Path("/tmp/bring-a-model")
SANDBOX_CODE = ("train", "model_defs", "handlers", "configs", "archive.sh")
DEMO_EXPORTS = ("image_classifier", "text_classifier", "audio_classifier")
IMAGE_FORMS = {  # model: (the form its example brings, runtime, tolerance)
    "shapes_plain": ("state_dict", "torch", 1e-5),
    "shapes_checkpoint": ("checkpoint", "torch", 1e-5),
    "shapes_lightning": ("checkpoint", "torch", 1e-5),
    "shapes_safetensors": ("safetensors", "torch", 1e-5),
    "shapes_pickled": ("pickled", "torch", 1e-5),
    "shapes_torchscript": ("torchscript", "torchscript", 1e-5),
    "shapes_onnx": ("onnx", "onnxruntime", 1e-4),
}
IMPORTED = [*IMAGE_FORMS, "tickets", "sounds"]
FINE_TUNED = "three_shapes"


def blocks_run_here() -> List[str]:
    """The page's bash blocks that it marks as run by this test, in page order."""
    return [block.text for block in blocks(PAGE)
            if block.info == "bash" and block.marker and block.marker.kind == "skip" and RUN_HERE in block.marker.reason]


def make_sandbox(root: Path) -> Path:
    """A checkout's shape: the code copied (so REPO_ROOT is here), .venv and the demo exports linked."""
    for name in SANDBOX_CODE:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    (root / "exports").mkdir()
    for name in DEMO_EXPORTS:
        (root / "exports" / name).symlink_to(users.demo_export(name))
    return root


def run_block(text: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", f"set -euo pipefail\n{text}"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"block failed ({result.returncode}):\n{text}\n--- stdout\n{result.stdout}\n" \
                                   f"--- stderr\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    """The page's blocks that need no server, run in order in a sandbox; their combined output."""
    shutil.rmtree(SCRATCH, ignore_errors=True)
    sandbox = make_sandbox(tmp_path_factory.mktemp("checkout"))
    env = {key: value for key, value in os.environ.items() if key not in ("EXPORTS_DIR", "MODEL_STORE", "CONFIGS_DIR")}
    outputs = [run_block(text, sandbox, env) for text in blocks_run_here() if "curl " not in text]
    return sandbox, "\n".join(result.stdout + result.stderr for result in outputs)


@pytest.fixture(scope="module")
def imported_server(page_run, own_torchserve):
    sandbox, _ = page_run
    return own_torchserve(sandbox / "model_store", [*IMPORTED, FINE_TUNED])


def test_every_form_of_the_page_imports_and_archives_with_the_default_configs(page_run):
    sandbox, output = page_run
    for model in [*IMPORTED, FINE_TUNED]:
        assert (sandbox / "model_store" / f"{model}.mar").is_file(), f"the page no longer makes {model}"
    for model, (form, runtime, _) in IMAGE_FORMS.items():
        spec = json.loads((sandbox / "exports" / model / "model.json").read_text())
        assert spec["imported"]["form"] == form and spec.get("runtime", "torch") == runtime, model
    assert "stripped the prefix module. from every key" in output
    assert "stripped the prefix model., _orig_mod. from every key" in output
    assert "the graph's batch is fixed at 1: batches run one item at a time" in output
    assert ("archive.sh: shapes_onnx has no model-config of its own (configs/shapes_onnx.yaml): using "
            "configs/image_classifier_onnx.yaml, the image default for the onnxruntime runtime") in output
    accuracies = re.findall(r"accuracy on /tmp/bring-a-model/(\S+): ([0-9.]+)", output)
    print(f"\naccuracy of the page's imports on their --data: {', '.join(f'{data} {value}' for data, value in accuracies)}")
    tuned = re.search(r"held-out accuracy: ([0-9.]+) on (\d+) images", output)
    print(f"fine-tuned from the demo export on three new shapes: held-out accuracy {tuned.group(1)} "
          f"on {tuned.group(2)} images")
    assert float(tuned.group(1)) >= 0.75
    assert "the classifier head (fc.bias, fc.weight) is new: the weights have 6 outputs, the data 3 classes" in output


def expected_image(contents):
    return users.image_probabilities(users.image_module(), contents, {"resize": 32, "crop": 32, "mean": [0.485, 0.456, 0.406],
                                                                      "std": [0.229, 0.224, 0.225]})


def largest_difference(answer: dict, expected_row: torch.Tensor, labels: List[str]) -> float:
    order = [labels[i] for i in expected_row.argsort(descending=True)[:len(answer)].tolist()]
    assert list(answer) == order, (answer, order)
    return max(abs(probability - float(expected_row[labels.index(label)])) for label, probability in answer.items())


@pytest.mark.parametrize("model", list(IMAGE_FORMS))
def test_each_image_form_is_served_with_the_original_modules_probabilities(imported_server, model):
    _, runtime, tolerance = IMAGE_FORMS[model]
    images = users.shape_images(8, seed=31, size=40)
    expected = expected_image(images)
    labels = users.labels_of("image_classifier")
    # Eight at once, so that TorchServe batches them (the fixed-batch ONNX graph runs them one by one).
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda image: imported_server.predict(model, data=image), images))
    worst = 0.0
    for response, row in zip(responses, expected):
        assert response.status_code == 200, response.text
        worst = max(worst, largest_difference(response.json(), row, labels))
    print(f"\n{model} ({runtime}): largest |served - original| probability {worst:.2e} (tolerance {tolerance:g})")
    assert worst <= tolerance
    assert imported_server.kinds[model].runtime == runtime


def test_the_text_and_audio_imports_are_served_with_the_original_modules_probabilities(imported_server):
    texts, _ = users.support_messages(2, seed=13)
    expected = users.text_probabilities(users.text_module(), texts, users.demo_export("text_classifier"),
                                        {"max_tokens": 128, "lowercase": True})
    worst_text = max(largest_difference(imported_server.predict("tickets", data=text.encode(),
                                                                headers={"Content-Type": "text/plain"}).json(),
                                        row, users.labels_of("text_classifier"))
                     for text, row in zip(texts, expected))
    clips = [content for content, _ in users.wav_clips(1, seed=17)]
    expected = users.audio_probabilities(users.audio_module(), clips, users.AudioPreprocessing().to_dict())
    worst_audio = max(largest_difference(imported_server.predict("sounds", data=clip).json(), row,
                                         users.labels_of("audio_classifier"))
                      for clip, row in zip(clips, expected))
    print(f"\ntickets: largest difference {worst_text:.2e}; sounds: {worst_audio:.2e} (tolerance 1e-05)")
    assert worst_text <= 1e-5 and worst_audio <= 1e-5


def test_an_imported_torchscript_model_is_explained_live(imported_server):
    response = imported_server.explain("shapes_torchscript", data=users.shape_images(1, seed=3)[0])
    assert response.status_code == 200, response.text
    assert len(response.json()["attributions"]) == 14


def test_the_fine_tuned_export_serves_its_three_labels(imported_server):
    answer = imported_server.predict(FINE_TUNED, data=users.png_bytes(users.synthetic_shapes.render_shape("star", 64, 5)))
    assert answer.status_code == 200 and set(answer.json()) == {"circle", "star", "ring"}
    assert next(iter(answer.json())) == "star"


def test_the_pages_curl_block_runs_against_the_imports(imported_server, tmp_path):
    (curl_block,) = [text for text in blocks_run_here() if "curl " in text]
    samples.write_samples(tmp_path / "samples", {"image", "text", "audio"})
    port = imported_server.inference_url.rsplit(":", 1)[1]
    env = {**os.environ, "INFERENCE_KEY": imported_server.inference_key}
    result = run_block(curl_block.replace("127.0.0.1:8080", f"127.0.0.1:{port}"), tmp_path, env)
    answers = json_documents(result.stdout)
    assert [next(iter(answer)) for answer in answers] == ["billing", "chirp_up", "star"], answers


def json_documents(text: str) -> list:
    """The JSON documents printed one after another (curl adds no newline between answers)."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents
