"""log4j2.xml, the frontend's logging that make serve, the live tests and the benchmark pass to
TorchServe: log4j refuses a malformed file silently (it falls back to errors on the console only, and
every log file stays empty), so its shape is checked here."""
import xml.etree.ElementTree as ElementTree

from scripts.local_torchserve import LOG_CONFIG

TORCHSERVE_LOG_FILES = {"access_log.log", "model_log.log", "model_metrics.log", "ts_log.log", "ts_metrics.log"}


def loggers():
    root = ElementTree.parse(LOG_CONFIG).getroot()  # raises on malformed XML, e.g. "--" inside a comment
    return root, {logger.get("name"): logger for logger in root.iter("Logger")}


def test_every_appender_reference_names_an_appender_and_every_log_file_is_kept():
    root, _ = loggers()
    appenders = {appender.get("name"): appender for appender in root.find("Appenders")}
    references = {ref.get("ref") for ref in root.iter("AppenderRef")}
    assert references <= set(appenders)
    files = {appender.get("fileName").rsplit("/", 1)[-1] for appender in appenders.values() if appender.get("fileName")}
    assert files == TORCHSERVE_LOG_FILES, "the same log files as TorchServe's own configuration, where tools look for them"


def test_lines_are_written_once_and_per_request_chatter_is_off():
    _, by_name = loggers()
    for name, logger in by_name.items():
        if logger.findall("AppenderRef"):
            assert logger.get("additivity") == "false", f"{name} would also write through the root logger"
    assert by_name["org.pytorch.serve"].get("level") == "info"
    for name in ("org.pytorch.serve.wlm.WorkerThread", "org.pytorch.serve.wlm.BatchAggregator"):
        assert by_name[name].get("level") == "warn"
    # The workers' metric lines ([METRICS] ...) are logged by WorkerLifeCycle at INFO: the benchmark
    # counts batches from them, so they must not be silenced with the per-request lines.
    assert "org.pytorch.serve.wlm.WorkerLifeCycle" not in by_name
    assert by_name["MODEL_LOG"].get("level") == "info" and by_name["ACCESS_LOG"].get("level") == "info"
