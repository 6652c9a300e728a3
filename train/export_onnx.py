"""Export a trained model to ONNX for ONNX Runtime, and an image model to int8.

    python -m train.export_onnx image_classifier             # exports/image_classifier_onnx/
    python -m train.export_onnx image_classifier --int8      # exports/image_classifier_int8/, from the _onnx graph
    python -m train.export_onnx text_classifier              # audio_classifier, or any export's name
    python -m train.export_onnx image_classifier --int8 --data DIR   # calibrate and evaluate on this ImageFolder

An ONNX export is refused unless its logits match the eager model's within 1e-4 (see
model_defs/onnx_export.py). int8 is static quantization calibrated on training images: the demo's
generated training shapes (the trainer's seed), or the training split of --data (by default, the data
the export was trained on, as its model.json records). The int8 graph and the eager fp32 model are then
evaluated on the same held-out images (the trainer's held-out split: seed + 1 for the demo), both
accuracies go into model.json, and the export is refused when int8 loses more than --max-accuracy-drop
points. Text and audio get no int8 variant: measured here, it does not pay for them (docs/onnx.md).
"""
import argparse
import random
import time
from pathlib import Path

from torch.utils.data import DataLoader

from model_defs.export import load_export, read_spec
from model_defs.image import draft_min_side, eval_transform
from model_defs.onnx_export import INT8_SUFFIX, ONNX_SUFFIX, export_int8, export_onnx, weights_digest
from model_defs.onnx_runtime import RUNTIME
from model_defs.torchscript_runtime import RUNTIME as TORCHSCRIPT_RUNTIME
from train import image as image_training
from train.common import REPO_ROOT, DataError, evaluate, run, use_all_cores


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m train.export_onnx",
                                     description="Export a model to ONNX (and an image model to int8) for ONNX Runtime")
    parser.add_argument("name", help="the export to convert: exports/<name>/ (image_classifier, text_classifier, audio_classifier, ...)")
    parser.add_argument("--exports-dir", type=Path, default=REPO_ROOT / "exports", help="where exports are (default: exports/)")
    parser.add_argument("--int8", action="store_true", help="quantize exports/<name>_onnx to exports/<name>_int8 (image models)")
    parser.add_argument("--data", type=Path, help="--int8: ImageFolder to calibrate and evaluate on (default: what the model was trained on)")
    parser.add_argument("--calibration-size", type=int, default=512, help="--int8: training images to calibrate on")
    parser.add_argument("--max-accuracy-drop", type=float, default=1.0,
                        help="--int8: refuse the export when int8 loses more held-out accuracy than this, in points (default 1)")
    return parser


def fail(message: str):
    """End like argparse does on a bad argument: `<prog>: error: <message>`, exit status 2."""
    get_args_parser().exit(2, f"{get_args_parser().prog}: error: {message}\n")


def image_sets(spec: dict, data, calibration_size: int):
    """(calibration images, held-out images) as the trainer split them, through the serving transform.

    The trainer's own functions and arguments (model.json's "training") make them, so the held-out
    images are exactly those the fp32 accuracy in model.json was measured on.
    """
    # The trainer's defaults under the recorded arguments: an imported export records the import's
    # arguments (its --data, no seed or held-out share).
    args = argparse.Namespace(**{**vars(image_training.get_args_parser().parse_args([])), **spec["training"]})
    args.data = Path(data) if data else (Path(args.data) if args.data else None)
    params = spec["preprocess"]
    if args.data:
        classes, train_set, heldout_set = image_training.user_datasets(args, params)
        # The training split untouched by augmentation, a seeded sample of it: calibration must see
        # what serving sees. A sample, not the first files, which are one class's.
        sample = random.Random(args.seed).sample(train_set.samples, min(calibration_size, len(train_set.samples)))
        calibration_set = image_training.ImageFileDataset(sample, eval_transform(params), min_side=draft_min_side(params))
    else:
        args.train_size = calibration_size  # the first images of the training set (balanced by class)
        classes, calibration_set, heldout_set = image_training.demo_datasets(args, params)
    return classes, calibration_set, heldout_set


def export_image_int8(args, base_dir: Path, onnx_dir: Path, out_dir: Path) -> dict:
    spec = read_spec(base_dir)
    if spec["modality"] != "image":
        fail(f"--int8 is for image models; {args.name} is a {spec['modality']} model, and int8 does not pay for "
             f"this bundle's text and audio models (docs/onnx.md): serve {args.name}{ONNX_SUFFIX}")
    onnx_spec = read_spec(onnx_dir) if (onnx_dir / "model.json").exists() else {}
    if onnx_spec.get("runtime") != RUNTIME or onnx_spec["source"]["weights_sha256"] != weights_digest(base_dir):
        fail(f"{onnx_dir} is missing or older than {base_dir}: run `python -m train.export_onnx {args.name}` first")
    classes, calibration_set, heldout_set = image_sets(spec, args.data, args.calibration_size)
    eager = load_export(base_dir)
    if list(classes) != eager.labels:
        if not set(classes) <= set(eager.labels):
            data = args.data or spec["training"].get("data")
            raise DataError(f"the classes of {data} ({', '.join(classes)}) are not the model's labels "
                            f"({', '.join(eager.labels)})")
        # An imported model's labels are in its output order, not the folders' sorted one: map by name.
        for dataset in (calibration_set, heldout_set):
            dataset.samples = [(path, eager.labels.index(classes[label])) for path, label in dataset.samples]
    heldout = DataLoader(heldout_set, batch_size=64)
    fp32_accuracy = round(evaluate(eager.model, heldout, image_training.image_batch), 4)

    def accuracy_of_int8(int8_model) -> dict:
        int8_accuracy = round(evaluate(int8_model, heldout, image_training.image_batch), 4)
        # From the accuracies as model.json records them (4 decimals), so the three figures add up there.
        drop = round(100 * (fp32_accuracy - int8_accuracy), 2)
        print(f"held-out accuracy on {len(heldout_set)} images: fp32 {fp32_accuracy:.4f}, int8 {int8_accuracy:.4f} "
              f"(drop {drop:+.2f} points)")
        if drop > args.max_accuracy_drop:
            fail(f"int8 loses {drop:.2f} points of held-out accuracy, more than --max-accuracy-drop "
                 f"{args.max_accuracy_drop:g}: not exported")
        return {"heldout_accuracy": int8_accuracy, "heldout_accuracy_fp32": fp32_accuracy,
                "accuracy_drop_points": drop, "heldout_examples": len(heldout_set),
                "calibration_data": str(args.data) if args.data else "generated shapes (training seed)"}

    calibration = ({"images": images.numpy()} for images, _ in DataLoader(calibration_set, batch_size=32))
    return export_int8(onnx_dir, out_dir, calibration, evaluate=accuracy_of_int8)


def main(args):
    started = time.perf_counter()
    use_all_cores()
    base_dir = args.exports_dir / args.name
    if not (base_dir / "model.json").exists():
        fail(f"{base_dir} is not an export (no model.json); train it first")
    spec = read_spec(base_dir)
    if spec.get("runtime") == RUNTIME:
        fail(f"{base_dir} is an ONNX export already; name the eager export it came from")
    if spec.get("runtime") == TORCHSCRIPT_RUNTIME:
        fail(f"{base_dir} is an imported TorchScript archive, which has no weights to export: import the model's "
             "weights (a state_dict) instead, or export its ONNX graph yourself and import that")
    if args.int8 and "imported" in spec and not (args.data or spec["training"].get("data")):
        fail(f"{base_dir} was imported without --data: calibrate and evaluate int8 on your images with --data DIR")
    onnx_dir = args.exports_dir / f"{args.name}{ONNX_SUFFIX}"
    if args.int8:
        out_dir = args.exports_dir / f"{args.name}{INT8_SUFFIX}"
        spec = export_image_int8(args, base_dir, onnx_dir, out_dir)
        detail = f"int8 held-out accuracy {spec['metrics']['heldout_accuracy']:.4f}"
    else:
        out_dir = onnx_dir
        spec = export_onnx(base_dir, out_dir)
        detail = (f"largest logit difference from eager {spec['parity']['max_abs_logit_difference']:.2g} "
                  f"(tolerance {spec['parity']['tolerance']:g})")
    print(f"{out_dir}: opset {spec['onnx']['opset']}, {detail}; {time.perf_counter() - started:.0f}s")
    return spec


if __name__ == "__main__":
    run(main, get_args_parser())
