"""How soon a KServe pod of this bundle is ready: from TorchServe's start to KServe's front end listening
(/v2/health/ready true), with every model of the `make kserve` folder.

    .venv/bin/python -m bench.kserve_readiness                     # kserve/ (make kserve), the manifest's variables
    .venv/bin/python -m bench.kserve_readiness --wrapper-defaults  # and once more with the wrapper's own (minutes)

The pod is started as scripts/kserve_pod.py starts it, as the runtime's entrypoint does: TorchServe from
the folder, then at once KServe's front end (scripts/kserve_frontend.py: kserve 0.13, and the wrapper's
readiness loop step for step, its sleep after every model's poll included), with the MODEL_LOAD_*
variables of --manifest (or none: the wrapper's defaults, 30 s after every model). The front end
listens only once every model's loop has ended; in a cluster, that is when the pod becomes ready.
Reported per run: seconds from TorchServe's start until every model's workers were READY (TorchServe's
management API, polled every 0.25 s), until the front end listened, and the difference: what the
front end adds to TorchServe's own start.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.machine import cpu_model
from scripts.kserve_pod import LOAD_VARIABLES, KServePod, manifest_env
from scripts.local_torchserve import REPO_ROOT, read_properties
from scripts.readiness import wait_for_models

TIMEOUT_S = 900  # the wrapper's defaults take 7 x 30 s after TorchServe's own start


def measure(bundle: Path, env: dict) -> dict:
    models = sorted(json.loads(read_properties(bundle / "config" / "config.properties")["model_snapshot"])["models"])
    with tempfile.TemporaryDirectory(prefix="kserve-readiness-") as workdir:
        pod = KServePod(bundle, Path(workdir), {"v1": env})
        try:
            workers = wait_for_models(pod.url, models, None, Path(workdir) / "logs", TIMEOUT_S, pod.torchserve.process,
                                      started=pod.started).require_all()
            listening = pod.wait_until_listening(TIMEOUT_S)["v1"]
            unready = [model for model in models if not pod.frontends["v1"].model_ready(model)]
        except (RuntimeError, TimeoutError) as error:
            raise SystemExit(f"{error}\n{pod.logs()}")
        finally:
            pod.stop()
    workers_ready = max(workers.ready_s.values())
    # The machine's 1-minute load average as the pod became ready: on a shared machine, what else ran.
    return {"models": len(models), "load_variables": env, "load_average": round(os.getloadavg()[0], 1),
            "workers_ready_s": workers_ready,
            "frontend_listening_s": listening, "frontend_adds_s": round(listening - workers_ready, 2),
            "models_not_ready_in_frontend": unready}


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m bench.kserve_readiness", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "kserve", help="the `make kserve` folder")
    parser.add_argument("--manifest", type=Path, default=REPO_ROOT / "deploy" / "kserve" / "inferenceservice-v1-cpu.yaml",
                        help="whose MODEL_LOAD_* variables the front end gets")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--wrapper-defaults", action="store_true",
                        help="also run with no MODEL_LOAD_* variables: the wrapper's defaults")
    parser.add_argument("--json", type=Path, help="write the results here too")
    return parser


def main(args) -> None:
    if not (args.bundle / "config" / "config.properties").is_file():
        raise SystemExit(f"{args.bundle} has no config/config.properties: run `make kserve` first")
    env = {name: value for name, value in manifest_env(args.manifest).items() if name in LOAD_VARIABLES}
    settings = [("manifest", env)] * args.runs + ([("wrapper defaults", {})] if args.wrapper_defaults else [])
    results = []
    for label, load_env in settings:
        result = {"settings": label, **measure(args.bundle, load_env)}
        results.append(result)
        print(f"{label} {load_env or ''}: {result['models']} models, every worker READY at {result['workers_ready_s']:.1f} s, "
              f"front end listening at {result['frontend_listening_s']:.1f} s (+{result['frontend_adds_s']:.1f} s), "
              f"load average {result['load_average']}"
              + (f"; NOT READY in the front end: {result['models_not_ready_in_frontend']}"
                 if result["models_not_ready_in_frontend"] else ""), flush=True)
    machine = f"{os.cpu_count()} cores, {cpu_model()}"
    print(f"machine: {machine}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
