"""Check KServe manifests offline against KServe's own schema: the `kserve` SDK's typed models.

    .venv-kserve/bin/python -m scripts.validate_kserve_manifests deploy/kserve/inferenceservice-*.yaml

Every InferenceService is built field by field into the SDK's models (V1beta1InferenceService and
down, with the Kubernetes client's models for containers and resources). Loading with the SDK's own
deserializer would drop an unknown key silently; here an unknown or misspelt field fails, naming its
path and the valid fields there, and each model's setters check required values and enums.

Beyond the schema, each predictor must set the variables that KServe's TorchServe front end reads to
decide how long it waits for each model (MODEL_LOAD_DELAY, MODEL_LOAD_MAX_TRY, MODEL_LOAD_TIMEOUT, as
whole seconds and counts it can int()): unset, its 30 s sleep after every model's check holds a pod of
seven models unready for 3.4 minutes (deploy/kserve/inferenceservice-v1-cpu.yaml says why each value).

Runs in its own virtual environment (.venv-kserve, requirements-kserve.txt): the SDK pins versions
of psutil and protobuf that TorchServe and ONNX in .venv need newer.
"""
import re
import sys
from pathlib import Path

import kubernetes.client.models as kubernetes_models
import yaml

import kserve.models as kserve_models

PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}
# What pytorch/serve's kserve_wrapper reads (int(os.environ.get(...))), each with the least that works:
# a delay of 0 spends every try before TorchServe listens.
LOAD_VARIABLES = {"MODEL_LOAD_DELAY": 1, "MODEL_LOAD_MAX_TRY": 1, "MODEL_LOAD_TIMEOUT": 1}


class ManifestError(ValueError):
    pass


def build(type_name: str, value, path: str):
    """`value` as the SDK type `type_name`; ManifestError naming `path` where it does not fit."""
    # The SDK writes list[T] and dict(str, T); newer Kubernetes clients List[T] and Dict[str, T].
    listed = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    if listed:
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list, got {type(value).__name__}")
        return [build(listed.group(1), item, f"{path}[{i}]") for i, item in enumerate(value)]
    mapped = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name)
    if mapped:
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected a mapping, got {type(value).__name__}")
        item_type = mapped.group(1) or mapped.group(2)
        return {key: build(item_type, item, f"{path}.{key}") for key, item in value.items()}
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (type_name != "bool" and isinstance(value, bool)):
            raise ManifestError(f"{path}: expected {type_name}, got {value!r}")
        return value
    if type_name == "datetime":
        return value
    model = getattr(kserve_models, type_name, None) or getattr(kubernetes_models, type_name, None)
    if model is None:
        raise ManifestError(f"{path}: the SDK has no type {type_name}")
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a {type_name} mapping, got {value!r}")
    attribute_of = {key: attribute for attribute, key in model.attribute_map.items()}
    unknown = sorted(set(value) - set(attribute_of))
    if unknown:
        raise ManifestError(f"{path}: unknown field(s) {', '.join(unknown)} in {type_name}; "
                            f"valid fields: {', '.join(sorted(attribute_of))}")
    arguments = {attribute_of[key]: build(model.openapi_types[attribute_of[key]], item, f"{path}.{key}")
                 for key, item in value.items()}
    try:
        return model(**arguments)
    except ValueError as error:  # a required field missing, a value outside its enum
        raise ManifestError(f"{path}: {error}") from None


def check_load_variables(model, where: str) -> None:
    """The predictor's MODEL_LOAD_* variables are set, each a whole number the wrapper can int()."""
    env = {variable.name: variable.value for variable in model.env or []}
    missing = [name for name in LOAD_VARIABLES if name not in env]
    if missing:
        raise ManifestError(f"{where}: spec.predictor.model.env sets no {', '.join(missing)}: KServe's TorchServe "
                            f"front end then waits its defaults (30 s after every model's check)")
    for name, least in LOAD_VARIABLES.items():
        value = env[name]
        if not (isinstance(value, str) and re.fullmatch(r"[0-9]+", value) and int(value) >= least):
            raise ManifestError(f"{where}: {name} must be a whole number of at least {least} (the front end "
                                f"int()s it), got {value!r}")


def validate(path: Path) -> list:
    """Every document of the file, each an InferenceService, built into the SDK's models."""
    built = []
    for number, document in enumerate(yaml.safe_load_all(path.read_text())):
        where = f"{path}[{number}]"
        if document.get("apiVersion") != "serving.kserve.io/v1beta1" or document.get("kind") != "InferenceService":
            raise ManifestError(f"{where}: not a serving.kserve.io/v1beta1 InferenceService")
        service = build("V1beta1InferenceService", document, where)
        if service.spec is None or service.spec.predictor is None:
            raise ManifestError(f"{where}: spec.predictor is required")
        if service.spec.predictor.model is None:
            raise ManifestError(f"{where}: spec.predictor.model is required (the pytorch model format)")
        check_load_variables(service.spec.predictor.model, where)
        built.append(service)
    return built


def main(paths) -> int:
    failed = False
    for path in map(Path, paths):
        try:
            services = validate(path)
        except ManifestError as error:
            print(f"invalid: {error}", file=sys.stderr)
            failed = True
            continue
        for service in services:
            model = service.spec.predictor.model
            env = {variable.name: variable.value for variable in model.env}
            print(f"valid: {path} ({service.metadata.name}: {model.model_format.name}, protocol {model.protocol_version}, "
                  f"runtime {model.runtime_version}, models checked every {env['MODEL_LOAD_DELAY']} s, "
                  f"{env['MODEL_LOAD_MAX_TRY']} tries)")
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
