"""`make serve`: start TorchServe in the background with config.properties, wait until every
archived model has a READY worker, then print curl lines that work as printed (tokens included).

Run from the repository root with the venv's python, `python -m scripts.serve`; `make stop`
(torchserve --stop) stops it. `--config` and `--workdir` serve another configuration from another
directory (the live test of make serve does, on ports of its own); TorchServe writes key_file.json,
logs/ and its pid file (in $TMPDIR: set it to stop that server with `torchserve --stop`) as usual.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from scripts import samples
from scripts.local_torchserve import VENV_BIN, read_properties, set_default_versions, start_command
from scripts.model_store import ModelKind, default_versions, kinds, model_names, scan
from scripts.readiness import wait_for_models

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 300


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m scripts.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.properties",
                        help="TorchServe's config.properties (default: the repository's)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT,
                        help="where TorchServe runs: key_file.json, logs/ and samples/ go there, and a relative "
                             "model_store is found there (default: the repository root)")
    return parser


def main(args):
    workdir, config = args.workdir.resolve(), args.config.resolve()
    key_file = workdir / "key_file.json"
    properties = read_properties(config)
    model_store = workdir / properties.get("model_store", "model_store")
    archives, problems = scan(model_store)
    for problem in problems:
        print(f"serve: skipping {problem}", file=sys.stderr)
    models = model_names(archives)
    if not models:
        sys.exit(f"serve: no archives in {model_store}; run ./archive.sh (make serve does)")
    # A server started earlier from here would keep serving the old archives: restart it.
    subprocess.run([str(VENV_BIN / "torchserve"), "--stop"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    key_file.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(start_command(config, foreground=False), cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    management_url = properties["management_address"]
    try:
        # Every version of every model, each by name/version.
        # A model whose worker keeps dying while loading is reported as soon as it has failed twice,
        # with the exception from its log, instead of being waited on for READY_TIMEOUT_S.
        readiness = wait_for_models(management_url, [archive.reference for archive in archives], key_file,
                                    workdir / "logs", READY_TIMEOUT_S, started=started)
    except TimeoutError as error:
        sys.exit(f"serve: {error}; see logs/model_log.log and logs/ts_log.log")
    keys, broken = readiness.keys, readiness.broken
    for model, reason in broken.items():
        print(f"serve: {model} did not load: {reason}; logs/model_log.log has the traceback", file=sys.stderr)
    models = [model for model in models if not any(b.split("/", 1)[0] == model for b in broken)]
    if not models:
        sys.exit("serve: no model loaded; stop the server with: make stop")
    # Only the models that loaded: a broken one has no version to make the default.
    defaults = {model: version for model, version in default_versions(archives).items() if model in models}
    set_default_versions(management_url, defaults, keys["management"]["key"])
    print(f"TorchServe is up with {', '.join(models)} (READY in {time.monotonic() - started:.0f}s); logs in logs/, stop with: make stop\n")
    model_kinds = kinds(archives)
    loaded = {model: model_kinds.get(model) for model in models}
    sample_files = samples.write_samples(workdir / "samples", {kind.modality for kind in loaded.values() if kind})
    print("\n".join(curl_lines(properties, keys, loaded, sample_files)))
    expiry = keys["inference"].get("expiration time", "")
    print(f"\nKeys are in key_file.json; the inference and management keys expire {expiry} "
          f"(refresh: docs/keys.md).")
    if broken:  # the others serve, but make serve fails so that a script running it notices
        sys.exit(f"serve: {len(broken)} model(s) did not load: {', '.join(broken)}")


def curl_lines(properties: Dict[str, str], keys: dict, models: Dict[str, Optional[ModelKind]],
               sample_files: Dict[str, Path]) -> List[str]:
    """What make serve prints: curl lines that work as printed (tokens included) against the server
    at `properties`' addresses, for each model in `models` (model → its kind; None: an archive without
    a model.json, which gets the management lines only). `sample_files` from samples.write_samples."""
    inference_url, management_url = properties["inference_address"], properties["management_address"]
    inference, management = keys["inference"]["key"], keys["management"]["key"]
    auth_i, auth_m = f'-H "Authorization: Bearer {inference}"', f'-H "Authorization: Bearer {management}"'
    lines = ["# Health", f"curl {auth_i} {inference_url}/ping"]
    for model, kind in models.items():
        lines += ["", f"# {model}"]
        if kind is not None:
            lines += samples.curl_examples(kind.modality, sample_files, f"{inference_url}/predictions/{model}", auth_i)
        # The first form again, on the explanations route; other runtimes than torch have none (they
        # answer 400 naming the eager model).
        if kind is not None and kind.explainable:
            why = samples.curl_examples(kind.modality, sample_files, f"{inference_url}/explanations/{model}", auth_i)
            lines.append(why[0].split("  #", 1)[0].rstrip() + "   # why: Captum attributions (docs/explanations.md)")
        lines += [
            f"curl {auth_m} {management_url}/models/{model}                     # describe",
            f'curl -X PUT {auth_m} "{management_url}/models/{model}?min_worker=2&max_worker=2&synchronous=true"   # scale to 2 workers',
            f'curl -X PUT {auth_m} "{management_url}/models/{model}?min_worker=1&max_worker=1&synchronous=true"   # and back to 1',
        ]
    lines += ["", "# Metrics (Prometheus)", f"curl {properties['metrics_address']}/metrics"]
    return lines


if __name__ == "__main__":
    main(get_args_parser().parse_args())
