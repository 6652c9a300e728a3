"""Faults inside a model, on a TorchServe of this module's own: broken archives beside good ones in
the model store, and a model whose forward pass runs out of memory on large batches.

The model store holds the real text_classifier archive and three built from it:
- truncated_text.mar, its first half: TorchServe cannot open it;
- no_model_json.mar, without model.json: it registers, and its worker dies while loading;
- text_classifier_oom.mar, its handler subclassed so that the real forward pass is refused by a
  simulated allocator on batches of more than 2 items, and on any batch holding a text that asks to
  "exhaust memory": everything else, the handler's split-in-halves retry included, is the real code.
"""
import json
import os
import re
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from scripts.local_torchserve import REPO_ROOT
from scripts.model_store import scan
from scripts.prometheus_text import scrape, select
from scripts.readiness import ModelsFailedToLoad, wait_for_models

GOOD, OOM, NO_SPEC, TRUNCATED = "text_classifier", "text_classifier_oom", "no_model_json", "truncated_text"
OOM_HANDLER = '''"""Test-only: the text handler whose forward pass runs out of memory above 2 items."""
import torch

from text_classifier_handler import TextClassifierHandler


class OutOfMemoryAboveTwoItems(TextClassifierHandler):
    def forward(self, batch):
        logits = super().forward(batch)
        texts = batch[0]
        if logits.shape[0] > 2 or any("exhaust memory" in text for text in texts):
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated, {len(texts)} items)")
        return logits
'''
TEXTS = ["my card was charged twice", "where is my parcel", "I cannot log in", "please cancel my plan",
         "the app crashes on start", "do you sell gift cards", "great service, thank you"]
TOO_LARGE = "this one will exhaust memory on its own"


def rewrite_archive(source, destination, model_name: str, drop=(), add=None, manifest_changes=None, yaml_changes=None):
    """A copy of the .mar `source` under another model name, with files dropped, added or edited."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in original.infolist():
            if info.filename in drop:
                continue
            data = original.read(info.filename)
            if info.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"].update(modelName=model_name, **(manifest_changes or {}))
                data = json.dumps(manifest).encode()
            elif info.filename.endswith(".yaml") and yaml_changes:
                text = data.decode()
                for key, value in yaml_changes.items():
                    text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
                data = text.encode()
            copy.writestr(info, data)
        for name, text in (add or {}).items():
            copy.writestr(name, text)


@pytest.fixture(scope="module")
def faulty_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("faulty_store")
    subprocess.run([str(REPO_ROOT / "archive.sh"), GOOD], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "MODEL_STORE": str(store)})
    good = store / f"{GOOD}.mar"
    (store / f"{TRUNCATED}.mar").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rewrite_archive(good, store / f"{NO_SPEC}.mar", NO_SPEC, drop={"model.json"})
    # maxBatchDelay 500 ms: concurrent requests meet in one batch, which the simulated allocator refuses.
    rewrite_archive(good, store / f"{OOM}.mar", OOM, add={"oom_text_handler.py": OOM_HANDLER},
                    manifest_changes={"handler": "oom_text_handler.py"}, yaml_changes={"maxBatchDelay": 500})
    return store


@pytest.fixture(scope="module")
def faulty_server(own_torchserve, faulty_store):
    return own_torchserve(faulty_store, [GOOD, OOM])


def test_broken_archives_are_named_with_their_problem_and_the_others_serve(faulty_server, faulty_store):
    started = time.monotonic()
    log_dir = faulty_server.process.workdir / "logs"
    readiness = wait_for_models(faulty_server.management_url, [GOOD, OOM, NO_SPEC], faulty_server.process.key_file,
                                log_dir, timeout_s=120, process=faulty_server.process.process, since={})
    broken = readiness.broken
    found_in = time.monotonic() - started
    print(f"\nbroken archive found {found_in:.1f} s after the good models were READY: {broken}")
    assert set(broken) == {NO_SPEC}
    assert "model.json" in broken[NO_SPEC] and "No such file" in broken[NO_SPEC], broken
    assert found_in < 60, "make serve reports it well before its 300 s timeout"
    # A caller that needs every model (the live fixtures, the benchmark, the soak) fails with the reason.
    with pytest.raises(ModelsFailedToLoad, match=rf"^{NO_SPEC} did not load: .*model\.json"):
        readiness.require_all()
    assert set(readiness.ready_s) == {GOOD, OOM}

    # The truncated archive never registers; the frontend's log names the file and the problem, and
    # make serve's scan of the store skips it with the same.
    models = requests.get(f"{faulty_server.management_url}/models", headers=faulty_server.management_headers,
                          timeout=30).json()["models"]
    assert {m["modelName"] for m in models} == {GOOD, OOM, NO_SPEC}
    ts_log = (log_dir / "ts_log.log").read_text(errors="replace")
    assert re.search(rf"Failed to load model: \S*{TRUNCATED}\.mar\s+\S*(EOFException|ZipException)", ts_log)
    _, problems = scan(faulty_store)
    assert len(problems) == 1 and f"{TRUNCATED}.mar" in problems[0], problems

    response = faulty_server.predict(GOOD, data=TEXTS[0].encode(), headers={"Content-Type": "text/plain"})
    assert response.status_code == 200 and next(iter(response.json())) == "billing"
    ping = requests.get(f"{faulty_server.inference_url}/ping", headers=faulty_server.inference_headers, timeout=30)
    assert ping.status_code == 200


def send_together(server, model, texts):
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        return list(pool.map(lambda text: server.predict(model, data=text.encode(), headers={"Content-Type": "text/plain"}),
                             texts))


def test_out_of_memory_is_retried_in_halves_and_only_the_item_too_large_alone_fails(faulty_server):
    pids_before = faulty_server.worker_pids(OOM)
    texts = TEXTS[:3] + [TOO_LARGE] + TEXTS[3:]
    responses = send_together(faulty_server, OOM, texts)
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 507, 200, 200, 200, 200], [r.text for r in responses]
    error = responses[3].json()
    assert error["code"] == 507 and error["type"] == "OutOfMemory" and "out of memory" in error["message"]
    assert responses[3].headers["Content-Type"].startswith("application/json")

    reference = send_together(faulty_server, GOOD, texts)
    for got, want, text in zip(responses, reference, texts):
        if text != TOO_LARGE:
            assert list(got.json()) == list(want.json())
            assert list(got.json().values()) == pytest.approx(list(want.json().values()), abs=1e-5)
    assert "retrying in halves" in faulty_server.model_log()
    assert faulty_server.worker_pids(OOM) == pids_before, "the worker stays up"
    after = faulty_server.predict(OOM, data=TEXTS[0].encode(), headers={"Content-Type": "text/plain"})
    assert after.status_code == 200, "the next batch is served"

    counts = [sample.value for sample in select(scrape(faulty_server.metrics_url), "ts_handler_out_of_memory", ModelName=OOM)]
    assert counts and counts[0] >= 2, "each refusal is counted on the metrics endpoint, for alerting"
