"""A procedurally generated, seeded image data set: coloured geometric shapes on textured or
noisy backgrounds. The demo image model trains on it because nothing can be downloaded here, and
anyone can draw a test image for it (a red star on a striped background is a `star`).

Each image varies shape size, position, rotation, colour and background (flat, gradient, stripes,
checkerboard, noise). Rendering is at 4x and downsampled, so edges are antialiased like a photo.
"""
import argparse
import math
import random
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
SUPERSAMPLE = 4


def _regular_polygon(cx, cy, radius, sides, rotation):
    return [
        (cx + radius * math.cos(rotation + 2 * math.pi * i / sides), cy + radius * math.sin(rotation + 2 * math.pi * i / sides))
        for i in range(sides)
    ]


def _star(cx, cy, radius, rotation, points=5):
    inner = radius * 0.42
    return [
        (cx + (radius if i % 2 == 0 else inner) * math.cos(rotation + math.pi * i / points),
         cy + (radius if i % 2 == 0 else inner) * math.sin(rotation + math.pi * i / points))
        for i in range(2 * points)
    ]


def _cross(cx, cy, radius, rotation):
    arm = radius * 0.33
    outline = [(arm, radius), (arm, arm), (radius, arm), (radius, -arm), (arm, -arm), (arm, -radius),
               (-arm, -radius), (-arm, -arm), (-radius, -arm), (-radius, arm), (-arm, arm), (-arm, radius)]
    cos, sin = math.cos(rotation), math.sin(rotation)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in outline]


def _background(rng: random.Random, size: int) -> Image.Image:
    np_rng = np.random.default_rng(rng.getrandbits(32))
    base = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    other = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    kind = rng.choice(("flat", "gradient", "stripes", "checker", "noise"))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "flat":
        mix = np.zeros((size, size), np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        mix = (x * math.cos(angle) + y * math.sin(angle))
        mix = (mix - mix.min()) / max(float(np.ptp(mix)), 1e-6)
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.08, 0.3)
        mix = (np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == "checker":
        cells = rng.randint(3, 10)
        mix = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
    else:
        mix = np.zeros((size, size), np.float32)
    # Textures stay subtler than the shape (at most half the colour difference), as in a photo of
    # an object on a patterned surface; the shape's colour is then chosen to stand out from them.
    pixels = base + mix[..., None] * (other - base) * rng.uniform(0.15, 0.5)
    pixels += np_rng.normal(0, rng.uniform(2, 25), size=(size, size, 3))  # sensor-like noise on every kind
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _luminance(rgb) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _contrasting_colour(rng: random.Random, background: Image.Image) -> Tuple[int, int, int]:
    """A random colour whose brightness differs clearly from the background's, as an object that
    stands out from its surroundings: a hue-only difference would vanish in a greyscale photo."""
    background_luminance = _luminance(np.asarray(background, dtype=np.float32).reshape(-1, 3).mean(axis=0))
    best, best_gap = None, -1.0
    for _ in range(16):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        gap = abs(_luminance(colour) - background_luminance)
        if gap > best_gap:
            best, best_gap = colour, gap
        if gap >= 70:
            break
    return best


def render_shape(shape: str, size: int = 64, seed: int = 0) -> Image.Image:
    """One RGB image of `shape` (one of SHAPES), deterministic for (shape, size, seed)."""
    return render_shape_with_mask(shape, size, seed)[0]


def render_shape_with_mask(shape: str, size: int = 64, seed: int = 0) -> Tuple[Image.Image, np.ndarray]:
    """`render_shape`'s image and where the shape is in it: a [size, size] float mask in [0, 1] (the
    share of each pixel the shape covers), e.g. to check that explanations point at the shape."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid choices: {', '.join(SHAPES)}")
    rng = random.Random(f"{shape}:{size}:{seed}")
    big = size * SUPERSAMPLE
    image = _background(rng, size).resize((big, big), Image.NEAREST)
    mask = Image.new("L", (big, big), 0)
    radius = rng.uniform(0.3, 0.46) * big  # 60-92% of the image wide: a star stays a star at 32 px
    cx = rng.uniform(radius, big - radius)
    cy = rng.uniform(radius, big - radius)
    rotation = rng.uniform(0, 2 * math.pi)
    colour = _contrasting_colour(rng, image)
    ring_width = max(2, int(radius * rng.uniform(0.22, 0.4))) if shape == "ring" else 0
    # The mask is drawn with the same strokes as the image (no randomness of its own), so the
    # images stay exactly those the demo model was trained on.
    for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask), 255)):
        if shape == "circle":
            canvas.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
        elif shape == "ring":
            canvas.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=fill, width=ring_width)
        elif shape == "square":
            canvas.polygon(_regular_polygon(cx, cy, radius, 4, rotation), fill=fill)
        elif shape == "triangle":
            canvas.polygon(_regular_polygon(cx, cy, radius, 3, rotation), fill=fill)
        elif shape == "star":
            canvas.polygon(_star(cx, cy, radius, rotation), fill=fill)
        elif shape == "cross":
            canvas.polygon(_cross(cx, cy, radius, rotation), fill=fill)
    image = image.resize((size, size), Image.LANCZOS)
    if rng.random() < 0.15:  # slightly out of focus
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.5)))
    return image, np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def generate(count: int, size: int, seed: int) -> Tuple[List[Image.Image], List[int]]:
    """`count` images with balanced labels (indices into SHAPES); disjoint seeds give disjoint sets."""
    images, labels = [], []
    for i in range(count):
        label = i % len(SHAPES)
        images.append(render_shape(SHAPES[label], size, seed=seed * 1_000_003 + i))
        labels.append(label)
    return images, labels


def write_folder(root: Path, per_class: int, size: int, seed: int, shapes: Sequence[str] = SHAPES) -> Path:
    """An ImageFolder of generated PNGs, root/<shape>/<n>.png: data in the layout `--data` takes, to try
    the training and import commands on without a data set of one's own."""
    images, labels = generate(per_class * len(SHAPES), size, seed)
    for image, label in zip(images, labels):
        if SHAPES[label] in shapes:
            folder = Path(root) / SHAPES[label]
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{len(list(folder.iterdir())):04d}.png")
    return Path(root)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.synthetic_shapes",
                                     description="Write generated shapes as an image folder (DIR/<shape>/<n>.png)")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (added to when it exists)")
    parser.add_argument("--per-class", type=int, default=20, help="images per shape (default 20)")
    parser.add_argument("--size", type=int, default=32, help="pixels per side (default 32, the demo model's)")
    parser.add_argument("--seed", type=int, default=7, help="default 7: not the demo model's training seed (0) "
                                                            "nor its held-out one (1)")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="default: all six")
    return parser


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    out = write_folder(arguments.out, arguments.per_class, arguments.size, arguments.seed, arguments.shapes)
    print(f"{out}: {arguments.per_class} images of each of {', '.join(arguments.shapes)}")
