"""Out of memory in the forward pass, for every modality's handler: the batch is retried in halves,
recursively, down to single items; an item that runs out of memory alone is answered 507 with a JSON
body naming the problem while every other item keeps its own answer; the worker serves the next batch.
The forward pass is the real model's; only the allocator's refusal is simulated, above a batch size."""
import io
import logging

import numpy as np
import pytest
import soundfile
import torch

import explanations
import out_of_memory
from export_paths import export_dir
from tests.support.harness import explain, load_handler, predict, run_batch, worker_row
from train.synthetic_shapes import render_shape
from train.synthetic_sounds import generate_clip


def png(shape: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    render_shape(shape, size=64, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(sound: str, seed: int) -> bytes:
    clip = generate_clip(sound, np.random.default_rng(seed))
    buffer = io.BytesIO()
    soundfile.write(buffer, clip.samples, clip.sample_rate, format="WAV")
    return buffer.getvalue()


def image_rows():
    return [worker_row(png(shape, seed)) for seed, shape in enumerate(("star", "circle", "ring", "cross", "square"))]


def text_rows():
    texts = ("my card was charged twice", "where is my parcel", "I cannot log in to my account",
             "please cancel my subscription", "the app crashes when I open it")
    return [worker_row(text, "text/plain") for text in texts]


def audio_rows():
    return [worker_row(wav(sound, seed)) for seed, sound in enumerate(("tone", "chirp_up", "chord", "pulse_train", "square_wave"))]


MODALITIES = {
    "image_classifier": ("image_classifier_handler", image_rows),
    "text_classifier": ("text_classifier_handler", text_rows),
    "audio_classifier": ("audio_classifier_handler", audio_rows),
}
BAD_ROW = worker_row(b"")  # answered 400 EmptyInput by every modality


@pytest.fixture(scope="module", params=sorted(MODALITIES))
def loaded(request, tmp_path_factory):
    model = request.param
    handler_module, rows = MODALITIES[model]
    return load_handler(handler_module, export_dir(model), model, tmp_dir=tmp_path_factory.mktemp(model)), rows()


def refuse_batches_over(handler, monkeypatch, limit: int, error=None) -> list:
    """The real forward pass, whose allocator refuses any batch of more than `limit` items; returns
    the list of batch sizes tried."""
    forward, tried = handler.forward, []

    def forward_with_memory_for(inputs):
        logits = forward(inputs)
        tried.append(logits.shape[0])
        if logits.shape[0] > limit:
            raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return logits

    monkeypatch.setattr(handler, "forward", forward_with_memory_for)
    return tried


def test_a_batch_that_runs_out_of_memory_is_answered_in_halves_with_the_same_answers(loaded, monkeypatch, caplog):
    (handler, context), rows = loaded
    batch = [rows[0], BAD_ROW, *rows[1:]]
    expected = predict((handler, context), *batch)
    assert [r.status for r in expected] == [200, 400, 200, 200, 200, 200]

    tried = refuse_batches_over(handler, monkeypatch, limit=2)
    with caplog.at_level(logging.WARNING):
        responses = predict((handler, context), *batch)
    assert [r.status for r in responses] == [200, 400, 200, 200, 200, 200]
    for got, want in zip(responses, expected):
        assert list(got.body) == list(want.body)
        assert list(got.body.values()) == pytest.approx(list(want.body.values()), abs=1e-5)
        assert got.headers == want.headers  # per-item headers (token counts, audio window) survive the split
    assert tried == [5, 2, 3, 1, 2], "5 → 2 + 3 → the 3 again as 1 + 2"
    assert "out of memory" in caplog.text and "retrying in halves" in caplog.text


def test_an_item_that_runs_out_of_memory_alone_gets_507_and_the_others_their_answers(loaded, monkeypatch):
    (handler, context), rows = loaded
    forward = handler.forward

    def second_item_too_large(inputs):  # the item at position 1 needs more memory than there is
        logits = forward(inputs)
        if logits.shape[0] > 1 or torch.equal(logits, forward(handler.collate([second]))):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")
        return logits

    second = handler.preprocess([rows[1]]).items[0]
    monkeypatch.setattr(handler, "forward", second_item_too_large)
    responses = predict((handler, context), rows[0], rows[1], BAD_ROW, rows[2])
    assert [r.status for r in responses] == [200, 507, 400, 200]
    assert responses[1].body["code"] == 507 and responses[1].body["type"] == "OutOfMemory"
    assert "out of memory" in responses[1].body["message"] and "alloc_cpu" not in responses[1].body["message"]


def test_out_of_memory_on_every_size_answers_507_per_item_and_the_next_batch_is_served(loaded, monkeypatch):
    (handler, context), rows = loaded
    counted = []
    monkeypatch.setattr(context.metrics, "add_counter", lambda name, value, *args: counted.append((name, value)))
    refuse_batches_over(handler, monkeypatch, limit=0)
    responses = predict((handler, context), rows[0], BAD_ROW, rows[1], rows[2])
    assert [r.status for r in responses] == [507, 400, 507, 507]
    assert all(r.headers.get("Content-Type", "application/json").startswith("application/json") for r in responses)
    # 3 items: tried as 3, then 1 and 2, then the 2 as 1 + 1: five refusals, each counted (and the batch, once).
    assert counted == [("ts_handler_out_of_memory", 1)] * 5 + [("ts_handler_batches", 1)]
    monkeypatch.undo()
    assert [r.status for r in predict((handler, context), rows[0], rows[1])] == [200, 200]


def test_an_explanation_is_not_attempted_for_an_item_that_ran_out_of_memory(loaded, monkeypatch):
    (handler, context), rows = loaded
    refuse_batches_over(handler, monkeypatch, limit=0)
    attempted = []
    monkeypatch.setattr(explanations, "explain_item", lambda *args: attempted.append(args) or {})
    responses = explain((handler, context), rows[0], rows[1])
    assert [r.status for r in responses] == [507, 507] and attempted == []


def test_an_explanation_that_runs_out_of_memory_gets_507_and_its_neighbour_its_prediction(loaded, monkeypatch):
    (handler, context), rows = loaded

    def attribution_out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(explanations, "attribute", attribution_out_of_memory)
    responses = run_batch(handler, context, [rows[0], rows[1]], explain=[True, False])
    assert [r.status for r in responses] == [507, 200]
    assert responses[0].body["type"] == "OutOfMemory"


def test_any_other_forward_failure_keeps_the_generic_500(loaded, monkeypatch):
    (handler, context), rows = loaded
    tried = refuse_batches_over(handler, monkeypatch, limit=0, error=RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    responses = predict((handler, context), rows[0], rows[1])
    assert [r.status for r in responses] == [500, 500] and tried == [2], "no retry for what is not out of memory"
    assert responses[0].body["type"] == "InternalServerError"


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
    (RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"), True),
    (MemoryError(), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x3 and 4x5)"), False),
    (ValueError("out of memory"), False),  # said in words, but not by an allocator
])
def test_out_of_memory_is_recognised_from_each_allocator(error, expected):
    assert out_of_memory.is_out_of_memory(error) is expected


def test_on_a_gpu_the_cached_memory_is_released_before_each_retry(monkeypatch, tmp_path):
    handler, context = load_handler("image_classifier_handler", export_dir("image_classifier"), "image_classifier",
                                    tmp_dir=tmp_path)
    released = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(True))
    monkeypatch.setattr(handler, "device", torch.device("cuda", 0))

    def out_of_memory_above_one(inputs):  # the CPU model stands in for the GPU one
        if inputs.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return handler.model(inputs)

    monkeypatch.setattr(handler, "forward", out_of_memory_above_one)
    monkeypatch.setattr(handler, "autocast_dtype", None)
    cpu_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: cpu_autocast("cpu", enabled=False))
    responses = predict((handler, context), *image_rows()[:4])
    assert [r.status for r in responses] == [200] * 4
    assert len(released) == 3, "4 → 2 + 2 → 1 + 1 twice: three refusals, the cache released after each"
