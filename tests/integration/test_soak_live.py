"""The soak's 60 s version (bench/soak.py; `make soak` runs it for 10 min): every model of the session's
TorchServe at once, at about half of the server's capacity, with no error, no worker restarted, and
worker memory flat after a short warm-up."""
import json

from bench.soak import Target, run_soak

SECONDS = 60


def test_a_minute_of_steady_load_on_every_model_has_no_error(server):
    target = Target(server.inference_url, server.management_url, server.keys["inference"]["key"],
                    server.keys["management"]["key"], server.process.process.pid)
    report = run_soak(target, server.kinds, SECONDS, warmup_seconds=10, probe_seconds=2, log=lambda line: print(line))
    print(f"\nsoak {SECONDS} s: " + json.dumps(report))
    assert report["errors"] == 0, report["error_examples"]
    assert report["summary"]["requests"] == report["scheduled"], "every scheduled request was sent and answered"
    assert report["workers_restarted"] == []
    assert report["worker_rss_drift_max"] < 0.05, report
