"""The Prometheus text parser the tools and tests read TorchServe's /metrics with (scripts/prometheus_text.py)."""
import math

import pytest

from scripts.prometheus_text import Sample, metric_types, parse, select

# As TorchServe 0.12 serves it (a trailing comma closes each label set), with the handler's own series.
TORCHSERVE_METRICS = """\
# HELP ts_handler_batches Torchserve prometheus counter metric with unit: Count
# TYPE ts_handler_batches counter
ts_handler_batches{ModelName="text_classifier",Level="Model",Hostname="vm",} 5.0
ts_handler_batches{ModelName="image_classifier",Level="Model",Hostname="vm",} 12.0
# HELP ts_handler_torch_threads Torchserve prometheus gauge metric with unit: Count
# TYPE ts_handler_torch_threads gauge
ts_handler_torch_threads{ModelName="text_classifier",Level="Model",WorkerPid="8346",Hostname="vm",} 1.0
# TYPE Requests2XX counter
Requests2XX{Level="Host",Hostname="vm",} 17.0
"""


def test_torchserves_exposition_gives_names_labels_and_values():
    samples = parse(TORCHSERVE_METRICS)
    assert [sample.name for sample in samples] == ["ts_handler_batches", "ts_handler_batches", "ts_handler_torch_threads",
                                                   "Requests2XX"]
    assert samples[2] == Sample("ts_handler_torch_threads", {"ModelName": "text_classifier", "Level": "Model",
                                                             "WorkerPid": "8346", "Hostname": "vm"}, 1.0)


def test_each_metrics_declared_type():
    assert metric_types(TORCHSERVE_METRICS) == {"ts_handler_batches": "counter", "ts_handler_torch_threads": "gauge",
                                                "Requests2XX": "counter"}


def test_select_matches_the_name_and_every_label_given():
    samples = parse(TORCHSERVE_METRICS)
    assert [s.value for s in select(samples, "ts_handler_batches", ModelName="image_classifier")] == [12.0]
    assert [s.value for s in select(samples, "ts_handler_batches")] == [5.0, 12.0]
    assert select(samples, "ts_handler_batches", ModelName="image") == [], "a label matches whole, not by prefix"
    assert select(samples, "ts_handler_torch_threads", WorkerPid="1") == []


def test_label_values_unescape_and_special_values_parse():
    (sample, unlabelled, nan, stamped) = parse(
        'm{path="C:\\\\dir",quote="say \\"hi\\"",text="a\\nb",brace="}{, =",} +Inf\n'
        "plain 3\n"
        "missing NaN\n"
        "stamped{a=\"1\"} -2.5e3 1700000000000\n")
    assert sample.labels == {"path": "C:\\dir", "quote": 'say "hi"', "text": "a\nb", "brace": "}{, ="}
    assert sample.value == math.inf
    assert unlabelled == Sample("plain", {}, 3.0)
    assert math.isnan(nan.value)
    assert stamped.value == -2500.0


@pytest.mark.parametrize("line", ['m{a="1"', 'm{a=1} 2', "m{a=\"1\"} two", "{a=\"1\"} 2", 'm{a="1" b="2"} 3'])
def test_a_line_that_is_not_a_sample_is_named(line):
    with pytest.raises(ValueError, match="not a Prometheus"):
        parse(f"# TYPE m gauge\n{line}\n")
