"""make serve's reading of TorchServe's logs for models that cannot load (scripts/load_failures.py),
on log lines as TorchServe 0.12 writes them."""
from scripts.load_failures import load_failures, log_sizes

TS_LOG = """\
2026-11-28T09:10:18,460 [INFO ] W-39896-nojson_text_1.0 org.pytorch.serve.wlm.WorkerThread - Retry worker: 39896 in 3 seconds.
2026-11-28T09:10:24,825 [WARN ] W-39896-nojson_text_1.0 org.pytorch.serve.wlm.BatchAggregator - Load model failed: nojson_text, error: Worker died.
2026-11-28T09:10:24,825 [WARN ] W-39896-nojson_text_1.0 org.pytorch.serve.wlm.BatchAggregator - Load model failed: nojson_text, error: Worker died.
2026-11-28T09:10:31,002 [WARN ] W-39897-bad_config_model_2.0 org.pytorch.serve.wlm.BatchAggregator - Load model failed: bad_config_model, error: Worker died.
"""
MODEL_LOG = """\
2026-11-28T09:10:24,822 [INFO ] W-39896-nojson_text_1.0-stdout MODEL_LOG - Backend worker process died.
2026-11-28T09:10:24,823 [INFO ] W-39896-nojson_text_1.0-stdout MODEL_LOG - Traceback (most recent call last):
2026-11-28T09:10:24,834 [INFO ] W-39896-nojson_text_1.0-stdout MODEL_LOG - FileNotFoundError: [Errno 2] No such file or directory: '/tmp/models/4493/model.json'
2026-11-28T09:10:30,990 [INFO ] W-39897-bad_config_model_2.0-stdout MODEL_LOG - ValueError: handler: unknown setting(s) 'top_kk'; valid settings: top_k, max_bytes
"""


def test_failed_loads_are_counted_once_each_with_the_workers_last_exception(tmp_path):
    (tmp_path / "ts_log.log").write_text(TS_LOG)
    (tmp_path / "model_log.log").write_text(MODEL_LOG)
    failures = load_failures(tmp_path)
    assert failures["nojson_text"] == (1, "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/models/4493/model.json'")
    assert failures["bad_config_model"] == (1, "ValueError: handler: unknown setting(s) 'top_kk'; valid settings: top_k, max_bytes")


def test_only_lines_written_after_the_start_count(tmp_path):
    (tmp_path / "ts_log.log").write_text(TS_LOG)
    (tmp_path / "model_log.log").write_text(MODEL_LOG)
    since = log_sizes(tmp_path)  # an earlier run's failures, in the same logs/
    assert load_failures(tmp_path, since) == {}
    with open(tmp_path / "ts_log.log", "a") as log:
        log.write(TS_LOG.splitlines()[1] + "\n")
    assert load_failures(tmp_path, since)["nojson_text"][0] == 1


def test_no_logs_yet_is_no_failure(tmp_path):
    assert load_failures(tmp_path / "logs", log_sizes(tmp_path / "logs")) == {}
