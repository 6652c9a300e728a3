"""KServe's front end for TorchServe, as the kserve-torchserve runtime runs it beside TorchServe in the pod.

    .venv-kserve-frontend/bin/python -m scripts.kserve_frontend [--http_port 8080] [--bind 0.0.0.0]
    (env: CONFIG_PATH, PROTOCOL_VERSION, MODEL_LOAD_DELAY, MODEL_LOAD_MAX_TRY, MODEL_LOAD_TIMEOUT, ...)

The runtime's image starts `torchserve --start` and then pytorch/serve's kubernetes/kserve/kserve_wrapper
(TorchserveModel.py, __main__.py), a thin `kserve.Model` subclass on kserve 0.13.0. This is the same
thing, written for this bundle so that its tests and benchmark run kserve's real server, with its real
request forwarding, in front of the bundle's TorchServe. It keeps the wrapper's behaviour exactly
where it matters (read from the wrapper's source):

- the model names are the keys of config.properties' model_snapshot, the addresses its
  inference_address and management_address (the file at $CONFIG_PATH, by default
  /mnt/models/config/config.properties); the predictor and explainer host is the inference address;
- the protocol is $PROTOCOL_VERSION (v1 by default; KServe sets it from the InferenceService's
  protocolVersion). kserve's Model does the calls: /v1/models/<m>:predict or /v2/models/<m>/infer
  with Content-Type application/json and the client's x-request-id and x-b3-traceid, and
  /v1/models/<m>:explain with neither (for v2 too). A 4xx from TorchServe comes back to the client
  as a 500 carrying TorchServe's message (on :explain, without it);
- readiness: before the server starts, each model in turn is polled at
  GET <management>/models/<m>?customized=$MODEL_LOAD_CUSTOMIZED with no token, ready once its
  default version has a READY worker; every try, the last one included, is followed by a sleep of
  $MODEL_LOAD_DELAY seconds (default 30), for at most $MODEL_LOAD_MAX_TRY tries (default 10) of
  $MODEL_LOAD_TIMEOUT seconds each (default 5). A connection error or timeout retries; any other
  failure (TorchServe's 400 InvalidKeyException with token authorization on, a 404) gives the model
  up at once.
  The server listens only once every model's loop has ended, ready or not: that is when the pod
  is ready, and /v2/health/ready answers true from then on whatever the models' state.

What differs, and why: `--bind` (kserve 0.13 binds 0.0.0.0; a test binds loopback) and gRPC off unless
bound to every interface (kserve 0.13's gRPC server binds [::] and cannot be told otherwise);
`--http_port`/`--grpc_port` (the wrapper fixes 8080/8081); the model store is checked with pathlib
(the wrapper's Storage.download returns a local path unchanged, and needs kserve[storage]); grpc-v2,
which the wrapper forwards to TorchServe's own gRPC API, is not reproduced and is refused.

It runs in its own virtual environment (.venv-kserve-frontend, requirements-kserve-frontend.txt):
kserve 0.13 pins numpy<2, protobuf and ray versions that clash with .venv's.
"""
import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import requests
import uvicorn
from kserve import Model, ModelServer
from kserve.errors import ModelMissingError
from kserve.model import PredictorProtocol
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferResponse

DEFAULT_CONFIG_PATH = "/mnt/models/config/config.properties"
DEFAULT_ADDRESS = "http://127.0.0.1:8085"
DEFAULT_MODEL_STORE = "/mnt/models/model-store"
READINESS_URL_FORMAT = "{0}/models/{1}?customized={2}"
ALL_INTERFACES = "0.0.0.0"


def parse_config(config_path: str) -> Tuple[List[str], str, str, str]:
    """The wrapper's parse_config: model names, inference and management addresses, model store."""
    settings: Dict[str, str] = {}
    with open(config_path) as lines:
        for line in lines:
            if not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                settings[name.strip()] = value.strip()
    snapshot = json.loads(settings.get("model_snapshot", "{}"))
    names = list(snapshot.get("models", {})) or ["model"]
    return (names, settings.get("inference_address", DEFAULT_ADDRESS),
            settings.get("management_address", DEFAULT_ADDRESS), settings.get("model_store", DEFAULT_MODEL_STORE))


class TorchServeModel(Model):
    """One TorchServe model behind kserve's server: kserve's own predict/explain calls to TorchServe's
    KServe routes, the wrapper's readiness loop and its REST postprocess."""

    def __init__(self, name: str, inference_address: str, management_address: str, protocol: str, model_store: str):
        super().__init__(name)
        self.predictor_host = inference_address.split("//")[1]
        self.explainer_host = self.predictor_host
        self.management_address = management_address
        self.model_store = model_store
        self.protocol = PredictorProtocol(protocol).value
        logging.info("%s: predictor and explainer %s, protocol %s", name, self.predictor_host, self.protocol)

    def postprocess(self, response, headers: Optional[Dict[str, str]] = None):
        # The wrapper's REST branch: a v2 answer back to a JSON request as a dict.
        if headers and "application/json" in headers.get("content-type", "") and isinstance(response, InferResponse):
            return response.to_rest()
        return response

    def load(self) -> bool:
        """The wrapper's TorchserveModel.load, step for step (its sleep after every try included)."""
        store = Path(self.model_store)
        if not [path for path in store.glob("*") if path.is_dir() or path.suffixes == [".mar"]]:
            raise ModelMissingError(store)
        customized = os.environ.get("MODEL_LOAD_CUSTOMIZED", "false")
        max_try = int(os.environ.get("MODEL_LOAD_MAX_TRY", 10))
        delay = int(os.environ.get("MODEL_LOAD_DELAY", 30))
        timeout = int(os.environ.get("MODEL_LOAD_TIMEOUT", 5))
        tries = 0
        while tries < max_try and not self.ready:
            tries += 1
            logging.info("Loading %s .. %d of %d tries..", self.name, tries, max_try)
            try:
                default_version = requests.get(READINESS_URL_FORMAT.format(self.management_address, self.name, customized),
                                               timeout=timeout).json()[0]
                ready_workers = [worker["id"] for worker in default_version["workers"] if worker["status"] == "READY"]
                self.ready = bool(ready_workers) and (customized == "false" or "customizedMetadata" in default_version)
            except (requests.ConnectionError, requests.Timeout):
                logging.info("The model %s is not ready", self.name)
            except Exception as error:  # the wrapper gives the model up: a refused token, a 404, an odd answer
                logging.info(error)
                logging.info("Failed loading model %s", self.name)
                break
            logging.info("Sleep %d seconds for load %s..", delay, self.name)
            time.sleep(delay)
        if self.ready:
            logging.info("The model %s is ready", self.name)
        return self.ready


def bind_rest_server_to(host: str) -> None:
    """kserve 0.13's UvicornServer passes host="0.0.0.0" to uvicorn.Config: put `host` in its place."""
    configure = uvicorn.Config.__init__

    def bound(self, *args, **kwargs):
        configure(self, *args, **{**kwargs, "host": host})

    uvicorn.Config.__init__ = bound


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m scripts.kserve_frontend", description=__doc__.split("\n")[0])
    parser.add_argument("--http_port", type=int, default=8080, help="kserve's REST port (the wrapper's: 8080)")
    parser.add_argument("--grpc_port", type=int, default=8081, help="kserve's gRPC port (the wrapper's: 8081)")
    parser.add_argument("--bind", default=ALL_INTERFACES,
                        help="the REST listener's address; gRPC runs only on 0.0.0.0, where kserve 0.13 binds it")
    return parser


def main(args) -> None:
    logging.basicConfig(level=os.environ.get("KSERVE_LOGLEVEL", "INFO").upper())
    protocol = os.environ.get("PROTOCOL_VERSION", PredictorProtocol.REST_V1.value)
    if protocol not in (PredictorProtocol.REST_V1.value, PredictorProtocol.REST_V2.value):
        raise SystemExit(f"PROTOCOL_VERSION={protocol!r}: this front end serves v1 and v2 over REST (the wrapper's "
                         f"grpc-v2 goes to TorchServe's own gRPC API, which it does not reproduce)")
    names, inference_address, management_address, model_store = parse_config(
        os.environ.get("CONFIG_PATH", DEFAULT_CONFIG_PATH))
    models = []
    for name in names:  # one after another, as the wrapper loads them
        model = TorchServeModel(name, inference_address, management_address, protocol, model_store)
        model.load()
        models.append(model)
    if args.bind != ALL_INTERFACES:
        bind_rest_server_to(args.bind)
    ModelServer(registered_models=ModelRepository(model_store), http_port=args.http_port, grpc_port=args.grpc_port,
                enable_grpc=args.bind == ALL_INTERFACES).start(models)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
