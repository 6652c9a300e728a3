"""Does int8 pay for the text and audio models? Why `make exports` quantizes only the image model.

    .venv/bin/python -m bench.onnx_int8_payoff

In-process, one thread, a batch of 8: each ONNX export (exports/<name>_onnx) on ONNX Runtime in fp32,
against the int8 graphs that ONNX Runtime's static quantization (model_defs.onnx_export.INT8_SETTINGS)
makes of it; for audio also the held-out accuracy, on the trainer's held-out clips. Audio is quantized
two ways: the whole graph, and the CNN alone with the log-mel front end kept in fp32.
"""
import tempfile
import time

import numpy as np
import torch

from model_defs.audio import AudioPreprocessing
from model_defs.export import load_export
from model_defs.onnx_export import quantize_int8, sample_inputs
from model_defs.onnx_runtime import ONNX_FILE, OnnxRuntimeModel
from train.audio import synthetic_dataset
from train.common import evaluate

EXPORTS = "exports"


def milliseconds(call, repeats: int = 200) -> float:
    for _ in range(5):
        call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1000 * (time.perf_counter() - started) / repeats


def front_end_nodes(nodes) -> list:
    """The audio graph's log-mel: every node up to its Log."""
    end = next(index for index, node in enumerate(nodes) if node.op_type == "Log")
    return [node.name for node in nodes[:end + 1]]


def classify(model, batch):
    waveforms, targets = batch
    return model(waveforms), targets


def main():
    with tempfile.TemporaryDirectory(prefix="int8-payoff-") as scratch:
        measure(scratch)


def measure(scratch: str):
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print("batch of 8, 1 thread, ms per batch (speedup over ONNX Runtime fp32)")

    text = load_export(f"{EXPORTS}/text_classifier")
    args, kwargs = sample_inputs(text, 8, generator)
    calibration = [sample_inputs(text, 8, generator)[1] for _ in range(16)]  # random token ids: speed only
    quantize_int8(f"{EXPORTS}/text_classifier_onnx/{ONNX_FILE}", f"{scratch}/text_int8.onnx",
                  ({name: tensor.numpy() for name, tensor in batch.items()} for batch in calibration), symbolic_shapes=False)
    fp32 = OnnxRuntimeModel(f"{EXPORTS}/text_classifier_onnx/{ONNX_FILE}", threads=lambda: 1)
    int8 = OnnxRuntimeModel(f"{scratch}/text_int8.onnx", threads=lambda: 1)
    with torch.inference_mode():
        eager_ms, fp32_ms = milliseconds(lambda: text.model(**kwargs)), milliseconds(lambda: fp32(**kwargs))
        int8_ms = milliseconds(lambda: int8(**kwargs))
    print(f"text_classifier   eager {eager_ms:.3f}  onnx fp32 {fp32_ms:.3f}  int8 {int8_ms:.3f} ({fp32_ms / int8_ms:.2f}x)")

    audio = load_export(f"{EXPORTS}/audio_classifier")
    preprocessing = AudioPreprocessing.from_dict(audio.spec["preprocess"])
    seed = audio.spec["training"]["seed"]
    # The trainer's seed streams: [seed, 0] for training clips (calibration), [seed, 1] held out.
    calibration, _ = synthetic_dataset(20, np.random.default_rng([seed, 0]), preprocessing)
    heldout = list(zip(*synthetic_dataset(audio.spec["training"]["heldout_per_class"], np.random.default_rng([seed, 1]),
                                          preprocessing)))
    heldout_batches = [tuple(map(torch.stack, zip(*heldout[i:i + 64]))) for i in range(0, len(heldout), 64)]
    fp32 = OnnxRuntimeModel(f"{EXPORTS}/audio_classifier_onnx/{ONNX_FILE}", threads=lambda: 1)
    (waveforms,), _ = sample_inputs(audio, 8, generator)
    with torch.inference_mode():
        fp32_ms = milliseconds(lambda: fp32(waveforms))
    line = f"audio_classifier  onnx fp32 {fp32_ms:.3f} (held-out {evaluate(fp32, heldout_batches, classify):.4f})"
    for label, keep_fp32 in (("int8 all", lambda nodes: []), ("int8 CNN only", front_end_nodes)):
        path = f"{scratch}/audio_{label.replace(' ', '_')}.onnx"
        quantize_int8(f"{EXPORTS}/audio_classifier_onnx/{ONNX_FILE}", path,
                      ({"waveforms": calibration[i:i + 16].numpy()} for i in range(0, len(calibration), 16)),
                      keep_fp32=keep_fp32, symbolic_shapes=False)
        int8 = OnnxRuntimeModel(path, threads=lambda: 1)
        with torch.inference_mode():
            int8_ms = milliseconds(lambda: int8(waveforms))
        line += f"  {label} {int8_ms:.3f} ({fp32_ms / int8_ms:.2f}x, held-out {evaluate(int8, heldout_batches, classify):.4f})"
    print(line)


if __name__ == "__main__":
    main()
