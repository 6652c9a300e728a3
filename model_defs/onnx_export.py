"""ONNX variants of an export: the same model as one ONNX graph served by ONNX Runtime, and (for
image models) an int8 graph from ONNX Runtime's static quantization.

exports/<name>_onnx/  (and <name>_int8/)
    model.onnx           the graph: the tensors the handler's forward passes in, logits out, with a
                         dynamic batch axis (and token axes for text), checked with onnx.checker
    model.json           the base export's (arch, model_args, preprocess, labels, metrics, training)
                         so the same handler and preprocessing serve it, plus "runtime": "onnxruntime",
                         "onnx" (opset, inputs, what the graph includes, its quantization), "source"
                         (the base export and a digest of its weights) and "parity" (fp32 only)
    index_to_name.json, tokenizer.json ...   the base export's other files, as they are

The fp32 graph must give the eager model's logits: `export_onnx` compares them on fixed inputs at
several batch sizes and refuses to write an export whose largest difference is over PARITY_TOLERANCE.
"""
import hashlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .export import (LABELS_FILE, MODEL_JSON, WEIGHTS_FILE, LoadedExport, checked_labels, load_export, package_versions,
                     read_spec, staged_directory, write_spec_and_labels)
from .onnx_runtime import ONNX_FILE, RUNTIME, OnnxRuntimeModel, all_cores, onnx_model

# The newest opset whose graphs of every model here the pinned onnxruntime (1.32) runs; the dynamo
# exporter writes 20 unless told. Not 23: from opset 23 the exporter writes attention as the new
# Attention operator, and ONNX Runtime 1.32's kernel refuses text_transformer's key-padding mask
# (broadcast over the query axis: "inconsistent q_sequence_length"); at 22 attention is MatMul and
# Softmax, which it runs (tests/unit/test_onnx_parity.py exports text_transformer to check).
OPSET = 22
# Largest |eager logit - ONNX Runtime logit| an fp32 export may show. Float32 kernels that sum in
# another order differ by about 1e-6 on these models; 1e-4 leaves room for larger models and other
# CPUs while still catching any real difference (a wrong op, a missed normalisation, a bad axis).
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZES = (1, 3, 8)
ONNX_SUFFIX, INT8_SUFFIX = "_onnx", "_int8"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# The name each modality's positional input gets in the graph (text models take keyword tensors,
# named by their batch_inputs).
POSITIONAL_INPUT = {"image": "images", "audio": "waveforms"}

Inputs = Tuple[Tuple[torch.Tensor, ...], Dict[str, torch.Tensor]]  # (args, kwargs) as the handler calls the model


class ConvLogMelSpectrogram(nn.Module):
    """A LogMelSpectrogram's computation as ONNX Runtime runs it fast: the STFT as one strided
    convolution with the windowed DFT basis, then power, the same mel filter bank and the same log.

    Why not the STFT operator the exporter writes: ONNX Runtime's STFT kernel took 15 of the 20 ms
    of a batch of eight 1 s clips on this CPU (torch's FFT: 4 ms for the whole log-mel), which made
    the ONNX audio model slower than eager. The convolution takes about 6 ms. Everything is taken
    from the LogMelSpectrogram it is built from (window, FFT size, hop, padding, filter bank, floor),
    so nothing is defined twice, and export_onnx checks the logits against the eager front end.
    """

    def __init__(self, log_mel: nn.Module):
        super().__init__()
        spectrogram, mel_scale = log_mel.mel.spectrogram, log_mel.mel.mel_scale
        if not spectrogram.center or spectrogram.pad != 0 or spectrogram.normalized or spectrogram.power != 2.0 \
                or not spectrogram.onesided:
            raise ValueError("ConvLogMelSpectrogram reproduces a centred, unnormalised, one-sided power spectrogram only")
        n_fft, window = spectrogram.n_fft, spectrogram.window.double()
        # torch.stft centres the win_length window inside the n_fft frame; only its taps multiply.
        self.window_offset = (n_fft - window.numel()) // 2
        self.trailing_zeros = n_fft - window.numel() - self.window_offset
        self.n_fft, self.hop_length, self.pad_mode = n_fft, spectrogram.hop_length, spectrogram.pad_mode
        self.bins = n_fft // 2 + 1
        frequencies = torch.arange(self.bins, dtype=torch.float64)[:, None]
        taps = torch.arange(self.window_offset, self.window_offset + window.numel(), dtype=torch.float64)[None, :]
        angles = 2 * torch.pi * frequencies * taps / n_fft
        basis = torch.cat([torch.cos(angles), -torch.sin(angles)]) * window  # [2 * bins, window taps]
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)
        self.register_buffer("filter_bank", mel_scale.fb.detach().clone(), persistent=False)  # [bins, n_mels]
        self.log_floor = log_mel.log_floor

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        padded = F.pad(waveforms[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode=self.pad_mode)
        # Drop what only the window's zero taps would read, so the frame count is torch.stft's.
        end = padded.shape[-1] - self.trailing_zeros
        spectrum = F.conv1d(padded[..., self.window_offset:end], self.basis, stride=self.hop_length)
        real, imaginary = spectrum[:, :self.bins], spectrum[:, self.bins:]
        power = real * real + imaginary * imaginary                                   # [batch, bins, frames]
        mel = torch.matmul(power.transpose(1, 2), self.filter_bank).transpose(1, 2)  # [batch, n_mels, frames]
        return torch.log(mel + self.log_floor).unsqueeze(1)


def graph_modules(export: LoadedExport) -> Tuple[nn.Module, nn.Module, Optional[str]]:
    """(the module to export, the eager computation it must equal, the front end the graph includes).

    The graph takes what the handler's forward passes to the model. For audio that is the batch of
    waveforms: the log-mel front end goes into the graph, so an ONNX consumer needs no torchaudio.
    """
    if export.spec["modality"] != "audio":
        return export.model, export.model, None
    from .audio import AudioPreprocessing, LogMelSpectrogram

    log_mel = LogMelSpectrogram(AudioPreprocessing.from_dict(export.spec["preprocess"])).eval()
    return nn.Sequential(ConvLogMelSpectrogram(log_mel), export.model).eval(), nn.Sequential(log_mel, export.model).eval(), "log_mel"


def sample_inputs(export: LoadedExport, batch_size: int, generator: torch.Generator, lengths=None) -> Inputs:
    """Seeded model inputs for `batch_size` items, as the handler's forward passes them: images
    normalised like the preprocessing's output, 1 s of noise at a speaking level, random token ids."""
    spec = export.spec
    modality, preprocess = spec["modality"], spec["preprocess"]
    if modality == "image":
        return (torch.randn(batch_size, 3, preprocess["crop"], preprocess["crop"], generator=generator),), {}
    if modality == "audio":
        window = int(round(preprocess["window_seconds"] * preprocess["sample_rate"]))
        return (0.3 * torch.randn(batch_size, window, generator=generator),), {}
    if modality == "text":
        vocab, longest = spec["model_args"]["vocab_size"], preprocess["max_tokens"]
        lengths = lengths or torch.randint(1, longest + 1, (batch_size,), generator=generator).tolist()
        token_ids = [torch.randint(1, vocab, (length,), generator=generator).tolist() for length in lengths]
        return (), export.model.batch_inputs(token_ids)
    raise ValueError(f"no ONNX export for modality {modality!r}")


def input_names(export: LoadedExport, inputs: Inputs) -> List[str]:
    args, kwargs = inputs
    positional = [POSITIONAL_INPUT[export.spec["modality"]]] if args else []
    return positional + list(kwargs)


def dynamic_shapes(first: Inputs, second: Inputs, batch_sizes: Tuple[int, int], names: Sequence[str]):
    """torch.export Dims for every axis whose size differs between two samples of different batch
    size and lengths: "batch" where it follows the batch size, else named after the first input
    axis with that size pattern (axes with the same pattern share a Dim, as torch.export requires)."""
    dims: Dict[Tuple[int, int], torch.export.Dim] = {}
    shapes = []
    tensors_a = [*first[0], *first[1].values()]
    tensors_b = [*second[0], *second[1].values()]
    for name, a, b in zip(names, tensors_a, tensors_b):
        axes = {}
        for axis, sizes in enumerate(zip(a.shape, b.shape)):
            if sizes[0] == sizes[1]:
                continue
            if sizes not in dims:
                dims[sizes] = torch.export.Dim("batch" if sizes == batch_sizes else f"{name}_axis{axis}", min=1)
            axes[axis] = dims[sizes]
        shapes.append(axes)
    args, kwargs = first
    if kwargs:
        return dict(zip(kwargs, shapes[len(args):]))
    return tuple(shapes)


def export_graph(module: nn.Module, inputs: Inputs, names: Sequence[str], shapes, path: Path, opset: int = OPSET) -> None:
    """torch.onnx.export (the dynamo exporter) to one self-contained file, then onnx.checker on it."""
    import onnx

    args, kwargs = inputs
    with warnings.catch_warnings():
        # Inputs that share a Dim (token_ids and padding_mask share batch and length) make the
        # exporter say, once per input, that it names the axis once: expected here, not news.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
        program = torch.onnx.export(module, args, kwargs=kwargs or None, input_names=list(names), output_names=["logits"],
                                    dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False)
    # One file, the archive's serialized file: protobuf caps it at 2 GB, far above these models.
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def max_logit_difference(reference: nn.Module, runtime_model, batches: Iterable[Inputs]) -> float:
    worst = 0.0
    with torch.inference_mode():
        for args, kwargs in batches:
            expected = reference(*args, **kwargs)
            worst = max(worst, float((runtime_model(*args, **kwargs) - expected).abs().max()))
    return worst


def weights_digest(export_dir) -> str:
    """sha256 of an eager export's weights: a variant records it, so a stale variant can be told apart."""
    digest = hashlib.sha256()
    with open(Path(export_dir) / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_companions(source: Path, destination: Path) -> None:
    """The export's other files (tokenizer.json ...), which the handler reads as it does for the base."""
    own = {WEIGHTS_FILE, ONNX_FILE, MODEL_JSON, LABELS_FILE}
    for path in source.iterdir():
        if path.is_file() and path.name not in own:
            shutil.copyfile(path, destination / path.name)


def export_onnx(base_dir, out_dir, *, name: Optional[str] = None, opset: int = OPSET,
                tolerance: float = PARITY_TOLERANCE, seed: int = 0) -> dict:
    """Export the eager export in `base_dir` to an ONNX export in `out_dir` (its model.json returned).

    Raises ValueError, writing nothing, when the graph's logits differ from the eager model's by more
    than `tolerance` on seeded inputs at PARITY_BATCH_SIZES.
    """
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    export = load_export(base_dir)
    module, reference, front_end = graph_modules(export)
    generator = torch.Generator().manual_seed(seed)
    # Two samples whose batch sizes and lengths all differ: their shapes tell which axes are dynamic.
    # Sizes of 1 are avoided, since torch.export specialises a dimension of size 1.
    first = sample_inputs(export, 2, generator, lengths=[3, 5] if export.spec["modality"] == "text" else None)
    second = sample_inputs(export, 3, generator, lengths=[4, 9, 6] if export.spec["modality"] == "text" else None)
    names = input_names(export, first)
    shapes = dynamic_shapes(first, second, (2, 3), names)
    parity_batches = [sample_inputs(export, size, generator) for size in PARITY_BATCH_SIZES]
    with staged_directory(out_dir) as staging:
        export_graph(module, first, names, shapes, staging / ONNX_FILE, opset)
        runtime_model = onnx_model(staging, export.spec, threads=all_cores)
        difference = max_logit_difference(reference, runtime_model, parity_batches)
        if difference > tolerance:
            raise ValueError(f"the ONNX graph of {base_dir} gives logits up to {difference:.3g} away from the eager "
                             f"model's, over the tolerance of {tolerance:g}: not exported")
        spec = {
            **export.spec,
            "name": name or out_dir.name,
            "runtime": RUNTIME,
            "onnx": {"file": ONNX_FILE, "opset": opset, "inputs": names, "output": "logits",
                     "dynamic_axes": _dynamic_axes_of(staging / ONNX_FILE), "front_end": front_end, "quantization": None},
            "source": {"name": export.spec["name"], "weights_sha256": weights_digest(base_dir)},
            "parity": {"max_abs_logit_difference": difference, "tolerance": tolerance,
                       "batch_sizes": list(PARITY_BATCH_SIZES)},
            "versions": {**export.spec.get("versions", {}), **package_versions(ONNX_PACKAGES)},
        }
        write_spec_and_labels(staging, spec, export.labels)
        _copy_companions(base_dir, staging)
    return spec


def _dynamic_axes_of(path: Path) -> Dict[str, Dict[str, str]]:
    """{input: {axis: name}} as the written graph declares them (what a consumer of model.onnx sees)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {graph_input.name: {str(axis): dim.dim_param
                               for axis, dim in enumerate(graph_input.type.tensor_type.shape.dim) if dim.dim_param}
            for graph_input in graph.input}


# ---- int8 ---------------------------------------------------------------------------------------------
# ONNX Runtime static quantization, as its documentation advises for CNNs on x86-64: QDQ format,
# int8 weights per output channel, uint8 activations (U8S8, the fast path of its x86 kernels; S8S8
# measured 1.8x slower than U8S8 here), MinMax ranges from calibration batches. reduce_range (7-bit
# weights) because this CPU has AVX2 but no VNNI, where U8S8's 16-bit intermediate sums can saturate:
# on the demo model full-range weights lost 0.6 point of held-out accuracy against fp32, 7-bit ones
# 0.1, at the same speed.
INT8_SETTINGS = {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": True,
                 "reduce_range": True, "calibration": "MinMax"}


class _CalibrationBatches:
    """onnxruntime.quantization's CalibrationDataReader protocol over an iterable of feed dicts."""

    def __init__(self, batches: Iterable[Dict[str, np.ndarray]]):
        self.batches, self.count = iter(batches), 0

    def get_next(self):
        batch = next(self.batches, None)
        if batch is not None:
            self.count += next(iter(batch.values())).shape[0]
        return batch


def quantize_int8(fp32_path, int8_path, calibration: Iterable[Dict[str, np.ndarray]], *,
                  keep_fp32: Callable[[List], List[str]] = lambda nodes: [], symbolic_shapes: bool = True) -> int:
    """Quantize an fp32 graph to int8 with INT8_SETTINGS; returns how many calibration items it saw.

    `keep_fp32(nodes)` names nodes of the prepared graph to leave in fp32 (a front end, say);
    `symbolic_shapes=False` skips ONNX Runtime's symbolic shape inference, which fails on some graphs
    (the audio front end's reflection padding). bench/onnx_int8_payoff.py uses both.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _CalibrationBatches(calibration)
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        # Shape inference and graph fusions first (Conv+BatchNorm folded ...), as the quantizer expects.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=not symbolic_shapes)
        excluded = keep_fp32(list(onnx.load(str(prepared)).graph.node))
        quantize_static(str(prepared), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)
    if reader.count == 0:
        raise ValueError("no calibration data: static quantization needs batches of real inputs")
    return reader.count


def export_int8(onnx_dir, out_dir, calibration: Iterable[Dict[str, np.ndarray]], *, name: Optional[str] = None,
                evaluate: Optional[Callable[[OnnxRuntimeModel], dict]] = None) -> dict:
    """Quantize the ONNX export in `onnx_dir` into `out_dir`. `evaluate(int8 model)` returns the metrics
    model.json records over the fp32 ones (the accuracies); it may raise to refuse the export, and
    then nothing is written."""
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    spec = read_spec(onnx_dir)
    if spec.get("runtime") != RUNTIME or spec["onnx"].get("quantization"):
        raise ValueError(f"{onnx_dir} is not an fp32 ONNX export (make it with export_onnx first)")
    with staged_directory(out_dir) as staging:
        count = quantize_int8(onnx_dir / ONNX_FILE, staging / ONNX_FILE, calibration)
        metrics = evaluate(onnx_model(staging, spec, threads=all_cores)) if evaluate else {}
        int8_spec = {
            **spec,
            "name": name or out_dir.name,
            "onnx": {**spec["onnx"], "quantization": {**INT8_SETTINGS, "calibration_examples": count}},
            "metrics": {**spec.get("metrics", {}), **metrics},
            "parity": None,  # int8 logits are not the eager ones; its accuracy is in metrics
        }
        write_spec_and_labels(staging, int8_spec, checked_labels(onnx_dir, spec))
        _copy_companions(onnx_dir, staging)
    return int8_spec
