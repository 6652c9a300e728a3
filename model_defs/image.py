"""Image models (torchvision architectures, built untrained) and the inference-time preprocessing.

`load_image` (bytes → RGB PIL image, a JPEG decoded no larger than `draft_min_side` needs) and
`eval_transform` (PIL → normalised tensor) are the one definition of image preprocessing:
train/image.py evaluates through them and the handler serves through them, so a served prediction
equals the one measured at training time.
"""
import functools
import io
import warnings
from typing import Sequence

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps, JpegImagePlugin
from torchvision.transforms import v2

from .registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision_builder(arch: str):
    def build(num_classes: int, image_size: int = 224, **kwargs) -> torch.nn.Module:
        # Vision transformers bake the input size into their position embeddings; CNNs accept any
        # size, so image_size is passed only where the architecture takes it.
        if arch.startswith(("vit_", "swin_", "maxvit")):
            kwargs.setdefault("image_size", image_size)
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)

    build.__name__ = f"build_{arch}"
    return build


# Every torchvision classification architecture is buildable by name (resnet18 is the default).
for _arch in torchvision.models.list_models(module=torchvision.models):
    register(_arch)(_torchvision_builder(_arch))


CHANNEL_ORDERS = ("RGB", "BGR")


def preprocess_params(image_size: int, resize: int = None, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD, channel_order: str = "RGB") -> dict:
    """The parameters model.json records: resize the shorter side to `resize`, centre-crop `image_size`,
    normalise with `mean` and `std` (given in the model's channel order). `channel_order` "BGR" (a
    model trained on OpenCV's decoding) is recorded; RGB, the default, is not."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"unknown channel order {channel_order!r}; valid choices: {', '.join(CHANNEL_ORDERS)}")
    params = {"resize": int(resize or image_size), "crop": int(image_size), "mean": list(mean), "std": list(std)}
    return params if channel_order == "RGB" else {**params, "channel_order": channel_order}


def to_model_channel_order(params: dict, images: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB → the model's channel order (its own inverse: BGR back to RGB, for display)."""
    return images.flip(-3) if params.get("channel_order", "RGB") == "BGR" else images


def eval_transform(params: dict) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(params["resize"], antialias=True),
        v2.CenterCrop(params["crop"]),
        v2.ToDtype(torch.float32, scale=True),
        *([v2.Lambda(functools.partial(to_model_channel_order, params))]
          if params.get("channel_order", "RGB") != "RGB" else []),
        v2.Normalize(params["mean"], params["std"]),
    ])


class ImageDecodeError(ValueError):
    """The bytes are not an image PIL can fully decode (unknown format, truncated, corrupt)."""


class ImageTooLargeError(ValueError):
    """The image's pixel count is over the limit (checked from the header, before decoding)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: EXIF orientation applied, transparency composited onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: PIL's convert("RGB") clips instead of scaling; scale to 8 bits first.
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    return image.convert("RGB")


# JPEGs are decoded with their shorter side at least this many times the resize (see load_image).
# At 1x the decoded side can land just above the resize, so the antialiased resize hardly filters
# and the model sees the decoder's 8x8 block averages; at 2x the resize always at least halves, as
# after a full decode. Measured on 450 demo shapes rendered at 256-511 px (JPEG q90), top labels
# that differ from a full decode's: 8 at 1x (accuracy 96.4% -> 95.6%), 3 at 2x (96.2%), 1 at 4x
# (96.2%); at 512-1023 px 1x and 2x both decode at 1/8: 1 of 300 differs (97.0% -> 96.7%). On a
# 4032x3024 photo at resize 256, 2x decodes at 1/4 scale instead of 1/8: no time difference beyond
# this machine's run-to-run noise (under 10 ms of about 60).
DRAFT_MARGIN = 2


def draft_min_side(params: dict) -> int:
    """The `min_side` to decode images at for the preprocessing `params` (model.json's "preprocess")."""
    return DRAFT_MARGIN * int(params["resize"])


def jpeg_draft_size(width: int, height: int, min_side: int):
    """The size to ask PIL's JPEG draft mode for so the decoded shorter side stays >= min_side, in
    the image's aspect ratio; None when no reduced scale (1/2 at least) could keep min_side."""
    shorter = min(width, height)
    if shorter < 2 * min_side:
        return None
    # Draft mode picks the largest DCT scale 1/s (s in 8, 4, 2) with s <= min(width // w, height // h)
    # and decodes ceil(side / s): flooring the longer side keeps the shorter side the one that decides.
    return max(1, width * min_side // shorter), max(1, height * min_side // shorter)


def load_image(content: bytes, max_pixels: int, min_side: int = None) -> Image.Image:
    """Decode image bytes (any format PIL reads; GIF/WebP animations give their first frame).

    `min_side`: the shortest side the caller needs (`draft_min_side` of its preprocessing, as the
    handler and training's held-out evaluation pass it). A JPEG is then decoded at a reduced
    DCT scale (1/2, 1/4 or 1/8) whose shorter side is still >= min_side, upright or rotated alike
    (an EXIF orientation transpose keeps the shorter side). Other formats have no such decoder.
    """
    try:
        image = Image.open(io.BytesIO(content))
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(str(error)) from None
    except Image.UnidentifiedImageError:
        # PIL's own message names the in-memory buffer by its address, which would make the same bad
        # upload get a different answer from every worker.
        raise ImageDecodeError("not a decodable image (no image format PIL reads recognises these bytes)") from None
    except Exception as error:
        raise ImageDecodeError(f"not a decodable image ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > max_pixels:
        # Checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
        raise ImageTooLargeError(f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"the image has no pixels ({width}x{height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            draft_size = jpeg_draft_size(width, height, min_side) if min_side else None
            if draft_size and isinstance(image, JpegImagePlugin.JpegImageFile):  # JPEG and MPO (phone photos)
                # A 12 MP phone JPEG (4032x3024, 3.6 MB, q90) took 150-215 ms to decode and
                # eval_transform on one core here (medians of runs of 15-25), 47-70 ms drafted to 1/8
                # or 1/4 scale: reading the 3.6 MB of entropy-coded data is what remains.
                image.draft(None, draft_size)
            image.seek(0)
            image.load()
            return to_rgb(image)
    except Exception as error:  # truncated data, bad chunks, bad palette...
        raise ImageDecodeError(f"the image data is corrupt or truncated ({type(error).__name__}: {error})") from None
