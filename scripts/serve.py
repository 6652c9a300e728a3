"""`make serve`: start TorchServe in the background with config.properties, wait until every
archived model has a READY worker, then print curl lines that work as printed (tokens included).

Run from the repository root with the venv's python, `python -m scripts.serve`; `make stop`
(torchserve --stop) stops it.
"""
import subprocess
import sys
import time
from pathlib import Path

from scripts import samples
from scripts.load_failures import wait_for_models
from scripts.local_torchserve import VENV_BIN, read_properties, set_default_versions, start_command
from scripts.model_store import default_versions, model_names, scan

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "config.properties"
KEY_FILE = REPO_ROOT / "key_file.json"
READY_TIMEOUT_S = 300


def main():
    properties = read_properties(CONFIG)
    model_store = REPO_ROOT / properties.get("model_store", "model_store")
    archives, problems = scan(model_store)
    for problem in problems:
        print(f"serve: skipping {problem}", file=sys.stderr)
    models = model_names(archives)
    if not models:
        sys.exit(f"serve: no archives in {model_store}; run ./archive.sh (make serve does)")
    # A server started earlier from here would keep serving the old archives: restart it.
    subprocess.run([str(VENV_BIN / "torchserve"), "--stop"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    KEY_FILE.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(start_command(CONFIG, foreground=False), cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    inference_url, management_url = properties["inference_address"], properties["management_address"]
    try:
        # Every version of every model, each by name/version.
        # A model whose worker keeps dying while loading is reported as soon as it has failed twice,
        # with the exception from its log, instead of being waited on for READY_TIMEOUT_S.
        keys, broken = wait_for_models(management_url, [f"{a.model}/{a.version}" for a in archives], KEY_FILE,
                                       REPO_ROOT / "logs", READY_TIMEOUT_S)
    except TimeoutError as error:
        sys.exit(f"serve: {error}; see logs/model_log.log and logs/ts_log.log")
    for model, reason in broken.items():
        print(f"serve: {model} did not load: {reason}; logs/model_log.log has the traceback", file=sys.stderr)
    models = [model for model in models if not any(b.split("/", 1)[0] == model for b in broken)]
    if not models:
        sys.exit("serve: no model loaded; stop the server with: make stop")
    # Only the models that loaded: a broken one has no version to make the default.
    defaults = {model: version for model, version in default_versions(archives).items() if model in models}
    set_default_versions(management_url, defaults, keys["management"]["key"])
    print(f"TorchServe is up with {', '.join(models)} (READY in {time.monotonic() - started:.0f}s); logs in logs/, stop with: make stop\n")
    sample_files = samples.write_samples(REPO_ROOT / "samples", models)

    inference, management = keys["inference"]["key"], keys["management"]["key"]
    auth_i, auth_m = f'-H "Authorization: Bearer {inference}"', f'-H "Authorization: Bearer {management}"'
    print("# Health")
    print(f"curl {auth_i} {inference_url}/ping")
    for model in models:
        print(f"\n# {model}")
        for line in samples.curl_examples(model, sample_files, f"{inference_url}/predictions/{model}", auth_i):
            print(line)
        # The first form again, on the explanations route; ONNX Runtime variants have none (they answer
        # 400 naming the eager model).
        why = [] if model.endswith(("_onnx", "_int8")) else \
            samples.curl_examples(model, sample_files, f"{inference_url}/explanations/{model}", auth_i)
        if why:
            print(why[0].split("  #", 1)[0].rstrip() + "   # why: Captum attributions (README: Explanations)")
        print(f"curl {auth_m} {management_url}/models/{model}                     # describe")
        print(f'curl -X PUT {auth_m} "{management_url}/models/{model}?min_worker=2&max_worker=2&synchronous=true"   # scale to 2 workers')
        print(f'curl -X PUT {auth_m} "{management_url}/models/{model}?min_worker=1&max_worker=1&synchronous=true"   # and back to 1')
    print(f"\n# Metrics (Prometheus)\ncurl {properties['metrics_address']}/metrics")
    expiry = keys["inference"].get("expiration time", "")
    print(f"\nKeys are in key_file.json; the inference and management keys expire {expiry} "
          f"(refresh: README, 'Keys').")
    if broken:  # the others serve, but make serve fails so that a script running it notices
        sys.exit(f"serve: {len(broken)} model(s) did not load: {', '.join(broken)}")


if __name__ == "__main__":
    main()
