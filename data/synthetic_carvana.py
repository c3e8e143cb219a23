"""A small generated data set in the exact on-disk layout of Kaggle's Carvana challenge.

Each "car" is a coloured ellipse with a darker window band and two dark wheels on a light grey,
slightly noisy studio background, so a small UNet separates it within a few epochs. Tests and
demos use it in place of the real 24 GB download:

    python -m data.synthetic_carvana Dataset/synthetic/Carvana --n_cars 12 --views 4
"""
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from cli.options import Parser, non_negative_int, positive_int
from utils.errors import UserError, run_cli

MASK_FORMATS = ("palette", "L")

# Kaggle's masks are GIFs whose palette index 0 is black and index 1 is white.
KAGGLE_MASK_PALETTE = [0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254


def _car_colour(rng):
    """A saturated colour: the body differs from the grey background in hue, not just brightness."""
    hue = rng.uniform(0.0, 1.0)
    saturation = rng.uniform(0.6, 1.0)
    value = rng.uniform(0.35, 0.85)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255.0


def _draw_view(rng, car_colour, height, width):
    """Draw one view of a car; return the RGB image (uint8) and its 0/1 mask (uint8)."""
    rows = np.arange(height)[:, None]
    columns = np.arange(width)[None, :]

    top, bottom = rng.uniform(170.0, 235.0, size=2)
    gradient = top + (bottom - top) * rows / max(height - 1, 1)
    tint = rng.uniform(-8.0, 8.0, size=3)
    image = gradient[..., None] + tint + rng.normal(0.0, 6.0, size=(height, width, 3))

    center_row = rng.uniform(0.42, 0.58) * height
    center_column = rng.uniform(0.35, 0.65) * width
    half_height = rng.uniform(0.18, 0.3) * height
    half_width = rng.uniform(0.25, 0.4) * width
    body = (((rows - center_row) / half_height) ** 2
            + ((columns - center_column) / half_width) ** 2) <= 1
    window_rows = (rows > center_row - 0.7 * half_height) & (rows < center_row - 0.2 * half_height)
    windows = body & window_rows
    wheel_radius = 0.35 * half_height
    wheels = np.zeros((height, width), dtype=bool)
    for side in (-0.55, 0.55):
        wheels |= ((rows - (center_row + 0.8 * half_height)) ** 2
                   + (columns - (center_column + side * half_width)) ** 2) <= wheel_radius ** 2

    # The colour varies a little between views, as lighting does between real photos.
    colour = car_colour * rng.uniform(0.9, 1.1)
    image[body] = colour + rng.normal(0.0, 8.0, size=(int(body.sum()), 3))
    image[windows] = colour * 0.45
    image[wheels] = 30.0 + rng.normal(0.0, 5.0, size=(int(wheels.sum()), 3))
    mask = (body | wheels).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _save_mask(mask, path, mask_format):
    height, width = mask.shape
    if mask_format == "palette":
        mask_image = Image.frombytes("P", (width, height), mask.tobytes())
        mask_image.putpalette(KAGGLE_MASK_PALETTE)
    else:
        mask_image = Image.fromarray(mask * 255)
    # Pillow's default optimisation rewrites the palette: a grey 0/255 mask would come back
    # as a 0/1 palette image, and the two formats would no longer differ on disk.
    mask_image.save(path, optimize=False)


def write_carvana(root, n_cars=6, views=4, size=(64, 96), seed=0, mask_format="palette"):
    """Write n_cars * views images and masks of size (height, width) under root; return root.

    mask_format "palette" writes 0/1 palette GIFs like Kaggle's; "L" writes 0/255 grey GIFs
    like re-saved copies. The same seed gives the same files.
    """
    height, width = size
    if n_cars < 1 or not 1 <= views <= 99 or height < 8 or width < 8:
        raise UserError(f"write_carvana needs n_cars >= 1, 1 <= views <= 99 and a size of at least "
                        f"8x8, not n_cars={n_cars}, views={views}, size={size}")
    if mask_format not in MASK_FORMATS:
        raise UserError(f"mask_format {mask_format!r} is not one of {', '.join(MASK_FORMATS)}")

    root = Path(root)
    image_folder = root / "train"
    mask_folder = root / "train_masks"
    image_folder.mkdir(parents=True, exist_ok=True)
    mask_folder.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    car_ids = set()
    while len(car_ids) < n_cars:
        car_ids.add("".join(f"{digit:x}" for digit in rng.integers(0, 16, size=13)))
    for car_id in sorted(car_ids):
        car_colour = _car_colour(rng)
        for view in range(1, views + 1):
            image, mask = _draw_view(rng, car_colour, height, width)
            name = f"{car_id}_{view:02d}"
            Image.fromarray(image).save(image_folder / f"{name}.jpg", quality=95)
            _save_mask(mask, mask_folder / f"{name}_mask.gif", mask_format)

    (root / "README.txt").write_text(
        "Synthetic data, not real cars: coloured ellipses on grey backgrounds written by\n"
        f"data/synthetic_carvana.py (seed {seed}, {n_cars} cars x {views} views, "
        f"{height}x{width} pixels, {mask_format} masks)\n"
        "in the layout of Kaggle's Carvana Image Masking Challenge: train/<id>_<NN>.jpg and\n"
        "train_masks/<id>_<NN>_mask.gif.\n")
    return root


def main(argv):
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to write train/ and train_masks/ into")
    parser.add_argument("--n_cars", type=positive_int, default=6, help="number of distinct car ids")
    parser.add_argument("--views", type=positive_int, default=4, help="images per car, named _01, _02, ...")
    parser.add_argument("--height", type=positive_int, default=64, help="image height in pixels")
    parser.add_argument("--width", type=positive_int, default=96, help="image width in pixels")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the same seed writes the same files")
    parser.add_argument("--mask_format", choices=MASK_FORMATS, default="palette",
                        help="palette: 0/1 palette GIFs as Kaggle's; L: 0/255 grey GIFs")
    args = parser.parse_args(argv)
    root = write_carvana(args.root, args.n_cars, args.views, (args.height, args.width),
                         args.seed, args.mask_format)
    print(f"wrote {args.n_cars * args.views} images and masks under {root}")


if __name__ == "__main__":
    run_cli(main)
