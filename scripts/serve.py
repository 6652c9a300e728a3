"""`make serve`: start TorchServe in the background with config.properties, wait until every
archived model has a READY worker, then print curl lines that work as printed (tokens included).

Run from the repository root with the venv's python; `make stop` (torchserve --stop) stops it.
"""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from scripts import samples  # noqa: E402

VENV_BIN = REPO_ROOT / ".venv" / "bin"
CONFIG = REPO_ROOT / "config.properties"
KEY_FILE = REPO_ROOT / "key_file.json"
READY_TIMEOUT_S = 300


def read_properties(path: Path) -> dict:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def describe(management_url: str, model: str, key: str) -> list:
    response = requests.get(f"{management_url}/models/{model}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_until_ready(management_url: str, models, started: float) -> dict:
    while time.monotonic() - started < READY_TIMEOUT_S:
        try:
            keys = json.loads(KEY_FILE.read_text())
            states = {m: [w["status"] for w in describe(management_url, m, keys["management"]["key"])[0]["workers"]] for m in models}
            if all(s and all(x == "READY" for x in s) for s in states.values()):
                return keys
        except (OSError, ValueError, KeyError, requests.RequestException):
            pass
        time.sleep(1)
    sys.exit(f"serve: models not READY within {READY_TIMEOUT_S}s; see {REPO_ROOT / 'logs' / 'model_log.log'} and ts_log.log")


def main():
    properties = read_properties(CONFIG)
    model_store = REPO_ROOT / properties.get("model_store", "model_store")
    models = sorted(p.stem for p in model_store.glob("*.mar"))
    if not models:
        sys.exit(f"serve: no archives in {model_store}; run ./archive.sh (make serve does)")
    # A server started earlier from here would keep serving the old archives: restart it.
    subprocess.run([str(VENV_BIN / "torchserve"), "--stop"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    KEY_FILE.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run([str(VENV_BIN / "torchserve"), "--start", "--ncs", "--ts-config", str(CONFIG)], cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    inference_url, management_url = properties["inference_address"], properties["management_address"]
    keys = wait_until_ready(management_url, models, started)
    print(f"TorchServe is up with {', '.join(models)} (READY in {time.monotonic() - started:.0f}s); logs in logs/, stop with: make stop\n")
    sample_files = samples.write_samples(REPO_ROOT / "samples", models)

    inference, management = keys["inference"]["key"], keys["management"]["key"]
    auth_i, auth_m = f'-H "Authorization: Bearer {inference}"', f'-H "Authorization: Bearer {management}"'
    print("# Health")
    print(f"curl {inference_url}/ping")
    for model in models:
        print(f"\n# {model}")
        for line in samples.curl_examples(model, sample_files, f"{inference_url}/predictions/{model}", auth_i):
            print(line)
        print(f"curl {auth_m} {management_url}/models/{model}                     # describe")
        print(f'curl -X PUT {auth_m} "{management_url}/models/{model}?min_worker=2&max_worker=2&synchronous=true"   # scale')
    print(f"\n# Metrics (Prometheus)\ncurl {properties['metrics_address']}/metrics")
    expiry = keys["inference"].get("expiration time", "")
    print(f"\nKeys are in key_file.json; the inference and management keys expire {expiry} "
          f"(refresh: README, 'Keys').")


if __name__ == "__main__":
    main()
