#!/usr/bin/env bash
# Packs every export in exports/ (or the ones named) into a self-contained model_store/<name>.mar.
#
#   ./archive.sh                      # all of exports/*/
#   ./archive.sh image_classifier     # just these
#   EXPORTS_DIR=... MODEL_STORE=... CONFIGS_DIR=... ./archive.sh
#
# An archive holds the weights (serialized file), the export's other files (model.json, labels,
# tokenizer ...), the handler for the export's modality, the handlers' shared modules (handler_common.py,
# explanations.py: every handlers/*.py that is not a modality's handler), the model_defs/ package
# and configs/<name>.yaml as its model-config. torch-model-archiver copies an --extra-files folder's
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
trap 'rm -rf "$stage_root"' EXIT

for name in "${names[@]}"; do
  export_dir=$exports_dir/$name
  [[ -f $export_dir/model.json && -f $export_dir/weights.pt ]] \
    || { echo "archive.sh: $export_dir is not an export (needs model.json and weights.pt)" >&2; exit 1; }
  config=$configs_dir/$name.yaml
  [[ -f $config ]] || { echo "archive.sh: no model-config for $name: expected $config" >&2; exit 1; }
  modality=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["modality"])' "$export_dir/model.json")
  handler=$repo/handlers/${modality}_classifier_handler.py
  [[ -f $handler ]] || { echo "archive.sh: $name has modality '$modality' but there is no $handler" >&2; exit 1; }

  stage=$stage_root/$name
  mkdir -p "$stage"
  cp -r "$repo/model_defs" "$stage/model_defs"
  for shared in "$repo"/handlers/*.py; do
    [[ $shared == *_classifier_handler.py ]] || cp "$shared" "$stage/"
  done
  find "$export_dir" -maxdepth 1 -type f ! -name weights.pt -exec cp {} "$stage/" \;
  find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +

  "$archiver" --force --model-name "$name" --version "$version" \
    --serialized-file "$export_dir/weights.pt" --handler "$handler" \
    --extra-files "$stage" --config-file "$config" --export-path "$model_store"
  echo "archived $model_store/$name.mar ($(du -h "$model_store/$name.mar" | cut -f1), $modality)"
done
