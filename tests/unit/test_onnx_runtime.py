"""OnnxRuntimeModel and the handler's choice of runtime: the eager call signature, threads that follow
the worker's share (the session is rebuilt), the CUDA provider only where onnxruntime has it (else a log
line saying the model runs on the CPU), and settings an ONNX graph cannot honour refused at start."""
import logging

import onnxruntime
import pytest
import torch
import yaml

from export_paths import REPO_ROOT, export_dir
from model_runtime import load_model
from tests.support.harness import load_handler
from model_defs.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER, ONNX_FILE, OnnxRuntimeModel, execution_providers
from model_defs.serving import runtime_of, serialized_file

IMAGE_ONNX = "image_classifier_onnx"


def images(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(batch_size))


def test_cuda_provider_only_for_a_gpu_worker_with_onnxruntime_gpu():
    assert execution_providers(1, [CUDA_PROVIDER, CPU_PROVIDER]) == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    assert execution_providers(None, [CUDA_PROVIDER, CPU_PROVIDER]) == [CPU_PROVIDER]
    assert execution_providers(0, [CPU_PROVIDER]) == [CPU_PROVIDER]


def test_a_gpu_worker_without_the_cuda_provider_says_it_runs_on_the_cpu(monkeypatch, caplog):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU_PROVIDER])
    with caplog.at_level(logging.WARNING, logger="model_defs.onnx_runtime"):
        model = OnnxRuntimeModel(export_dir(IMAGE_ONNX) / ONNX_FILE, threads=lambda: 1, gpu_id=0, name=IMAGE_ONNX)
    assert model.device == "cpu" and not model.on_gpu
    assert model.session.get_providers() == [CPU_PROVIDER]
    assert "GPU 0" in caplog.text and "runs on the CPU" in caplog.text and "onnxruntime-gpu" in caplog.text


def test_the_session_follows_the_workers_thread_share():
    share = {"threads": 1}
    model = OnnxRuntimeModel(export_dir(IMAGE_ONNX) / ONNX_FILE, threads=lambda: share["threads"])
    first_session = model.session
    before = model(images(2))
    assert model.session is first_session and model.session_threads == 1
    share["threads"] = 2  # TorchServe scaled this model's workers down: a bigger share
    after = model(images(2))
    assert model.session is not first_session and model.session_threads == 2
    assert model.session.get_session_options().intra_op_num_threads == 2
    assert model.session.get_session_options().inter_op_num_threads == 1
    assert torch.equal(before, after) or float((before - after).abs().max()) < 1e-5


def test_the_model_takes_the_eager_call_signature():
    model = OnnxRuntimeModel(export_dir("text_classifier_onnx") / ONNX_FILE, threads=lambda: 1)
    token_ids, offsets = torch.tensor([5, 6, 7, 8]), torch.tensor([0, 3])
    by_position, by_name = model(token_ids, offsets), model(offsets=offsets, token_ids=token_ids)
    assert by_position.shape == (2, by_position.shape[1]) and by_position.dtype == torch.float32
    assert torch.equal(by_position, by_name)
    with pytest.raises(TypeError, match="token_ids, offsets"):
        model(token_ids, offsets, offsets)
    with pytest.raises(TypeError, match="unknown: \\['lengths'\\]"):
        model(token_ids=token_ids, lengths=offsets)


def test_the_serialized_file_picks_the_runtime(tmp_path):
    assert runtime_of(serialized_file(tmp_path, {"model": {"serializedFile": "model.onnx"}})) == "onnxruntime"
    assert runtime_of(serialized_file(tmp_path, {"model": {"serializedFile": "weights.pt"}})) == "torch"
    assert runtime_of(serialized_file(tmp_path, {"model": {"serializedFile": "model.torchscript.pt"}})) == "torchscript"
    assert runtime_of(serialized_file(export_dir(IMAGE_ONNX))) == "onnxruntime"  # an export folder, no manifest
    assert runtime_of(serialized_file(export_dir("image_classifier"))) == "torch"


def test_an_onnx_worker_refuses_autocast_precision_at_start(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "configs" / f"{IMAGE_ONNX}.yaml").read_text())
    config["handler"]["precision"] = "bf16"
    with pytest.raises(ValueError, match="set precision: fp32"):
        load_handler("image_classifier_handler", export_dir(IMAGE_ONNX), IMAGE_ONNX, model_yaml=config, tmp_dir=tmp_path)


def test_a_gpu_worker_keeps_torch_on_the_cpu_for_onnx_runtime(tmp_path, monkeypatch):
    handler, _ = load_handler("image_classifier_handler", export_dir(IMAGE_ONNX), IMAGE_ONNX, tmp_dir=tmp_path)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU_PROVIDER])
    loaded = load_model(IMAGE_ONNX, str(tmp_path / IMAGE_ONNX), handler.manifest, 0, "image", "fp32", threads=lambda: 1)
    assert loaded.device == torch.device("cpu") and loaded.export.model.device == "cpu"
