"""Train the image classifier and export it for serving.

    python -m train.image                      # demo: generated shapes, resnet18 at 32x32
    python -m train.image --data DIR           # your ImageFolder: DIR/<class>/*.jpg
    python -m train.image --arch resnet50 --image-size 224 --data DIR
    python -m train.image --epochs 0 --image-size 224 --resize 256 --out DIR   # untrained: seeded initial weights
    python -m train.image --data DIR --init-weights exports/image_classifier   # fine-tune an export
    python -m train.image --data DIR --arch resnet50 --init-weights IMAGENET1K_V2 --backbone-lr-scale 0.1

Writes exports/image_classifier/ (weights.pt, model.json, index_to_name.json), which archive.sh packs.
"""
import argparse
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from model_defs.export import write_export
from model_defs.image import draft_min_side, eval_transform, load_image, preprocess_params
from model_defs.registry import build_model
from train import synthetic_shapes
from train.common import (add_training_arguments, architecture_of, class_folders, export_metrics, fit,
                          fraction, per_class_heldout_split, print_summary, run, seed_everything, untrained_metrics,
                          use_threads)
from train.init_weights import add_init_arguments, initial_weights, start_from

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
DEFAULT_ARCH = "resnet18"
MAX_TRAIN_PIXELS = 100_000_000


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m train.image", description="Train the image classifier")
    parser.add_argument("--data", type=Path, help="ImageFolder directory (one subfolder per class); default: generated shapes")
    parser.add_argument("--arch", type=architecture_of("image"),
                        help=f"any torchvision classification architecture (default {DEFAULT_ARCH}, or the "
                             "--init-weights export's)")
    parser.add_argument("--image-size", type=int, help="crop size fed to the model (default: what --init-weights was "
                                                        "trained at, else 32 for the demo shapes, 224 for --data)")
    parser.add_argument("--resize", type=int, help="shorter side before the centre crop (default: in --init-weights' "
                                                    "proportion, else the image size for the demo, 256/224 of it for --data)")
    parser.add_argument("--train-size", type=int, default=5800, help="generated training images (demo data only)")
    parser.add_argument("--heldout-size", type=int, default=1200, help="generated held-out images (demo data only)")
    parser.add_argument("--heldout-fraction", type=fraction, default=0.2, help="share of each --data class held out for accuracy")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for --data")
    add_init_arguments(parser, "image")
    return add_training_arguments(parser, "image_classifier", epochs=3, batch_size=32, lr=1e-3, weight_decay=5e-4,
                                  threads=0)


def zero_init_residual_branches(model: torch.nn.Module) -> None:
    """Start each residual block as the identity (the last BN of its branch at zero): from-scratch
    ResNets then learn markedly faster (Goyal et al., 2017). Other architectures are left as built."""
    for module in model.modules():
        if isinstance(module, torchvision.models.resnet.BasicBlock):
            torch.nn.init.zeros_(module.bn2.weight)
        elif isinstance(module, torchvision.models.resnet.Bottleneck):
            torch.nn.init.zeros_(module.bn3.weight)


def image_batch(model, batch):
    images, targets = batch
    return model(images), targets


class ImageFileDataset(Dataset):
    """(path, label) pairs decoded with the serving decoder (EXIF, transparency, modes), then `transform`.
    `min_side`: decode JPEGs at a reduced scale as load_image does with it; None decodes every pixel."""

    def __init__(self, samples, transform, min_side=None):
        self.samples, self.transform, self.min_side = samples, transform, min_side

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.transform(load_image(path.read_bytes(), MAX_TRAIN_PIXELS, min_side=self.min_side)), label


def user_datasets(args, params):
    # Only image files are read: notes or thumbnail databases beside them are not training data.
    classes, files_per_class = class_folders(args.data, IMAGE_SUFFIXES)
    train, heldout = per_class_heldout_split(files_per_class, args.heldout_fraction, args.seed)
    augment = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(params["crop"], scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(params["mean"], params["std"]),
    ])
    # Training images decode at full resolution: RandomResizedCrop's smallest crops (half the area) of
    # a draft decode (shorter side >= 2x the resize) would be shrunk by as little as 1.4x, the regime
    # where the decoder's 8x8 block averages show through (DRAFT_MARGIN, model_defs/image.py), and no
    # photo set is here to measure what that does to training; the cost is the DataLoader workers'.
    # Held-out images decode as the handler decodes them, so model.json's accuracy is the served one.
    return classes, ImageFileDataset(train, augment), ImageFileDataset(heldout, eval_transform(params),
                                                                       min_side=draft_min_side(params))


def demo_datasets(args, params):
    # Images are generated at the model's size and go through the serving transform once, up front:
    # the held-out accuracy is then measured on exactly what the handler would feed the model.
    transform = eval_transform(params)

    def tensors(count, seed):
        images, labels = synthetic_shapes.generate(count, args.image_size, seed)
        return TensorDataset(torch.stack([transform(image) for image in images]), torch.tensor(labels))

    return list(synthetic_shapes.SHAPES), tensors(args.train_size, args.seed), tensors(args.heldout_size, args.seed + 1)


def image_preprocessing(args, initial) -> dict:
    """The preprocessing to train and serve with: what --init-weights expects (an export's, torchvision's
    transforms) unless the sizes are given, else the demo's (32 px) or the ImageNet convention (--data)."""
    expected = (initial.spec["preprocess"] if initial and initial.spec else initial.preprocess if initial else {})
    if args.image_size is None:
        args.image_size = expected.get("crop") or (224 if args.data else 32)
    if args.resize is None and expected.get("crop"):
        args.resize = round(args.image_size * expected["resize"] / expected["crop"])
    if args.resize is None and args.data:
        args.resize = round(args.image_size * 256 / 224)  # the ImageNet convention: resize 256, crop 224
    if not expected:
        return preprocess_params(args.image_size, args.resize)
    return preprocess_params(args.image_size, args.resize, expected["mean"], expected["std"],
                             expected.get("channel_order", "RGB"))


def main(args):
    seed_everything(args.seed)
    threads = use_threads(args.threads)
    started = time.perf_counter()
    initial = initial_weights(args, "image", DEFAULT_ARCH)
    params = image_preprocessing(args, initial)
    data = str(args.data) if args.data else "generated shapes"
    if args.epochs == 0:  # the class names only: no image is generated or read
        classes = class_folders(args.data, IMAGE_SUFFIXES)[0] if args.data else list(synthetic_shapes.SHAPES)
    elif args.data:
        classes, train_set, heldout_set = user_datasets(args, params)
        loader_args = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    else:
        classes, train_set, heldout_set = demo_datasets(args, params)
        loader_args = {}

    model_args = {"num_classes": len(classes), "image_size": args.image_size}
    model = build_model(args.arch, modality="image", **model_args)
    groups, extra_spec = None, None
    if initial is None:
        zero_init_residual_branches(model)
    else:
        groups, extra_spec = start_from(model, initial, args, modality="image", model_args=model_args,
                                        labels=classes, lr=args.lr)
    if args.epochs == 0:
        metrics = untrained_metrics(args.seed, data=data, started=started, init_weights=args.init_weights)
    else:
        print(f"{len(classes)} classes, {len(train_set)} training / {len(heldout_set)} held-out images, "
              f"{threads} threads, data ready in {time.perf_counter() - started:.0f}s")
        train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                  drop_last=len(train_set) > args.batch_size, **loader_args)
        heldout_loader = DataLoader(heldout_set, batch_size=256, **loader_args)
        fitted = fit(model, train_loader, heldout_loader, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                     optimizer=args.optimizer, forward=image_batch, label_smoothing=0.05, parameter_groups=groups)
        metrics = export_metrics(fitted, train_examples=len(train_set), heldout_examples=len(heldout_set), data=data,
                                 started=started)

    write_export(args.out, model, name="image_classifier", modality="image", arch=args.arch,
                 model_args=model_args, preprocess=params, labels=classes, metrics=metrics,
                 training_args=vars(args), packages=("torch", "torchvision"), extra_spec=extra_spec)
    print_summary(metrics, "images", args.out)
    return metrics


if __name__ == "__main__":
    run(main, get_args_parser())
