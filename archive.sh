#!/usr/bin/env bash
# Packs every export in exports/ (or the ones named) into a self-contained model_store/<name>.mar.
#
#   ./archive.sh                      # all of exports/*/
#   ./archive.sh image_classifier     # just these
#   MODEL_VERSION=2.0 ./archive.sh image_classifier   # a second version: model_store/image_classifier-2.0.mar
#   EXPORTS_DIR=... MODEL_STORE=... CONFIGS_DIR=... ./archive.sh
#
# An archive holds the model (serialized file: weights.pt, model.onnx, or an imported model.torchscript.pt), the
# export's other files (model.json, labels, tokenizer ...), the handler for the export's modality, the handlers'
# shared modules (batch_handler.py, protocols.py, explanations.py ...: every handlers/*.py that is not a modality's
# handler), the model_defs/ package and configs/<name>.yaml as its model-config; an export without a config of its
# own (one imported or trained under a new name) gets its modality's and runtime's default, and the line says which:
# configs/<modality>_classifier.yaml, or configs/<modality>_classifier_onnx.yaml for an ONNX graph.
# torch-model-archiver copies an --extra-files folder's
# contents flat, so a staging folder that *contains* model_defs/ is passed: the package survives, and
# the .mar loads on a TorchServe whose PYTHONPATH has no checkout on it. Re-running overwrites (--force).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exports_dir=${EXPORTS_DIR:-$repo/exports}
model_store=${MODEL_STORE:-$repo/model_store}
configs_dir=${CONFIGS_DIR:-$repo/configs}
version=${MODEL_VERSION:-1.0}
if [[ -x $repo/.venv/bin/torch-model-archiver ]]; then
  archiver=$repo/.venv/bin/torch-model-archiver
  python=$repo/.venv/bin/python
else
  archiver=$(command -v torch-model-archiver) || { echo "archive.sh: torch-model-archiver not found; run 'make setup' first" >&2; exit 1; }
  python=python3
fi

if [[ $# -gt 0 ]]; then
  names=("$@")
else
  names=()
  for spec in "$exports_dir"/*/model.json; do
    [[ -f $spec ]] && names+=("$(basename "$(dirname "$spec")")")
  done
fi
if [[ ${#names[@]} -eq 0 ]]; then
  echo "archive.sh: nothing to archive: no exports (*/model.json) in $exports_dir. Train first: make exports" >&2
  exit 1
fi

mkdir -p "$model_store"
stage_root=$(mktemp -d)
aside=
trap 'rm -rf "$stage_root" ${aside:+"$aside"}' EXIT

for name in "${names[@]}"; do
  export_dir=$exports_dir/$name
  # The serialized file picks the runtime the handler serves with (model_defs/serving.py): model.onnx (ONNX
  # Runtime: an _onnx/_int8 variant from `python -m train.export_onnx`, or an imported graph), an imported
  # TorchScript archive model.torchscript.pt (torch, as it is), else weights.pt (torch, rebuilt from model.json).
  serialized=$export_dir/weights.pt
  for candidate in model.onnx model.torchscript.pt; do
    if [[ -f $export_dir/$candidate ]]; then serialized=$export_dir/$candidate; break; fi
  done
  [[ -f $export_dir/model.json && -f $serialized ]] \
    || { echo "archive.sh: $export_dir is not an export (needs model.json and weights.pt, model.onnx or model.torchscript.pt)" >&2; exit 1; }
  read -r modality runtime < <("$python" -c 'import json,sys; spec = json.load(open(sys.argv[1])); print(spec["modality"], spec.get("runtime", "torch"))' "$export_dir/model.json")
  handler=$repo/handlers/${modality}_classifier_handler.py
  [[ -f $handler ]] || { echo "archive.sh: $name has modality '$modality' but there is no $handler" >&2; exit 1; }
  config=$configs_dir/$name.yaml
  if [[ ! -f $config ]]; then
    # Modality and runtime from model.json, never the name: an ONNX graph's config keeps precision fp32.
    default_config=${modality}_classifier
    [[ $runtime == onnxruntime ]] && default_config=${modality}_classifier_onnx
    config=$configs_dir/$default_config.yaml
    [[ -f $config ]] || { echo "archive.sh: no model-config for $name: expected $configs_dir/$name.yaml, or the default $config" >&2; exit 1; }
    shown=${configs_dir#"$repo"/}  # configs/, as the user types it from the checkout
    echo "archive.sh: $name has no model-config of its own ($shown/$name.yaml): using $shown/$default_config.yaml," \
         "the $modality default for the $runtime runtime; copy it to $shown/$name.yaml to set workers, batching or" \
         "limits for $name"
  fi

  stage=$stage_root/$name
  mkdir -p "$stage"
  cp -r "$repo/model_defs" "$stage/model_defs"
  for shared in "$repo"/handlers/*.py; do
    [[ $shared == *_classifier_handler.py ]] || cp "$shared" "$stage/"
  done
  find "$export_dir" -maxdepth 1 -type f ! -name "$(basename "$serialized")" -exec cp {} "$stage/" \;
  find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +

  # Version 1.0 is <name>.mar; another version gets its own file, <name>-<version>.mar, so that both
  # load (TorchServe takes the model's name and version from the archive's manifest, not the file).
  mar=$name.mar
  [[ $version == 1.0 ]] || mar=$name-$version.mar
  # Built aside in the model store's own file system, then renamed into place: an interrupted run
  # never leaves a half-written archive where TorchServe would load it.
  aside=$(mktemp -d "$model_store/.archiving-XXXXXX")
  # torch-model-archiver stages the archive's files in $TMPDIR/<model name>: two runs for the same
  # model at once (a second version, a test beside a benchmark) would mix their files. Give each its own
  # (not $stage_root itself: there $stage_root/<model name> is our staging folder).
  mkdir -p "$stage_root/archiver"
  TMPDIR=$stage_root/archiver "$archiver" --force --model-name "$name" --version "$version" \
    --serialized-file "$serialized" --handler "$handler" \
    --extra-files "$stage" --config-file "$config" --export-path "$aside"
  mv -f "$aside/$name.mar" "$model_store/$mar"
  rmdir "$aside"
  echo "archived $model_store/$mar ($(du -h "$model_store/$mar" | cut -f1), $modality, version $version)"
done
