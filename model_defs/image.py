"""Image models (torchvision architectures, built untrained) and the inference-time preprocessing.

`load_image` (bytes → RGB PIL image) and `eval_transform` (PIL → normalised tensor) are the one
definition of image preprocessing: train/image.py evaluates through them and the handler serves
through them, so a served prediction equals the one measured at training time.
"""
import io
import warnings
from typing import Sequence

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
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


def preprocess_params(image_size: int, resize: int = None, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> dict:
    """The parameters model.json records: resize the shorter side to `resize`, centre-crop `image_size`."""
    return {"resize": int(resize or image_size), "crop": int(image_size), "mean": list(mean), "std": list(std)}


def eval_transform(params: dict) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(params["resize"], antialias=True),
        v2.CenterCrop(params["crop"]),
        v2.ToDtype(torch.float32, scale=True),
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


def load_image(content: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes (any format PIL reads; GIF/WebP animations give their first frame)."""
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
            image.seek(0)
            image.load()
            return to_rgb(image)
    except Exception as error:  # truncated data, bad chunks, bad palette...
        raise ImageDecodeError(f"the image data is corrupt or truncated ({type(error).__name__}: {error})") from None
