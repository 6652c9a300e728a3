#!/usr/bin/env bash
# Fails loudly, before anything is installed, when the interpreter, Java, Chromium or Prometheus the bundle needs is missing.
set -uo pipefail
python=${1:-python3.11}
status=0
version=$("$python" -c 'import platform; print(platform.python_version())' 2>/dev/null)
if [[ -z "$version" ]]; then
  echo "setup: $python not found or does not run. The bundle needs Python 3.11 (make PYTHON=/path/to/python3.11 ...)." >&2
  status=1
elif [[ "$version" != 3.11.* ]]; then
  echo "setup: $python is Python $version; the bundle needs 3.11 (make PYTHON=/path/to/python3.11 ...)." >&2
  status=1
fi
# The console's tests (tests/integration/test_console_live.py) run a real Chromium: Debian's, never a download.
chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x "$chromium" ]]; then
  echo "setup: Chromium not found at $chromium. The console's tests drive it headless (apt-get install chromium, or set CHROMIUM=/path/to/chromium)." >&2
  status=1
fi
if ! command -v java >/dev/null 2>&1; then
  echo "setup: java not found. TorchServe's frontend needs Java 17 (e.g. apt-get install openjdk-17-jre-headless)." >&2
  status=1
else
  java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  if [[ "$java_major" != "17" ]]; then
    echo "setup: java is version ${java_major:-unknown}; TorchServe 0.12 is run and tested here on Java 17." >&2
    status=1
  fi
fi
# Prometheus and promtool check and run deploy/prometheus/ (make test: tests/unit/test_monitoring.py,
# tests/integration/test_monitoring_live.py); Debian's package ships both.
for tool in prometheus promtool; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup: $tool not found. The monitoring tests run the real Prometheus (e.g. apt-get install prometheus)." >&2
    status=1
  fi
done
exit $status
