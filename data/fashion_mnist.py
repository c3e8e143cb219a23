"""FashionMNIST from its official IDX files, held in memory as one uint8 tensor; and images to predict.

Read from `<data_dir>/FashionMNIST/raw/` in either form users have it: the four `.gz` files as
downloaded, or the unpacked IDX files torchvision leaves beside them. No PIL round-trip: a batch
is one indexing operation on the in-memory array. `FashionMNISTImages` is a folder of PNG / JPEG
images (any size, grey or colour, prepared by `load_image`) and IDX files, for prediction.
"""
import copy
import gzip
import hashlib
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch

from utils.atomic import atomic_open
from utils.errors import UserError

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension, images: 3 dimensions; type code 0x08 = uint8
HOW_TO_GET = ("download the four files from https://github.com/zalandoresearch/fashion-mnist "
              "into that folder, or let a training run fetch them (trainer_vanilla.py --download)")


def raw_dir(data_dir):
    return Path(data_dir) / "FashionMNIST" / "raw"


def find_file(folder, name):
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"FashionMNIST file {folder / name}[.gz] is missing; {HOW_TO_GET}")


def read_idx(path):
    """An IDX file (optionally gzipped) of uint8 values as a tensor; malformed files are a UserError."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise UserError(f"{path} cannot be read ({error}); {HOW_TO_GET}") from None
    if len(data) < 4:
        raise UserError(f"{path} is truncated ({len(data)} bytes); {HOW_TO_GET}")
    magic = int.from_bytes(data[:4], "big")
    if magic not in IDX_MAGIC:
        raise UserError(f"{path} is not an IDX file of uint8 (magic number {magic}, expected 2049 or 2051)")
    n_dims = IDX_MAGIC[magic]
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise UserError(f"{path} is truncated inside its header; {HOW_TO_GET}")
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims)]
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise UserError(f"{path} has {len(data)} bytes but its header {tuple(shape)} needs {expected}; "
                        f"the file is truncated or corrupt; {HOW_TO_GET}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy())


def download(data_dir, log=print):
    """Fetch the four official files into `<data_dir>/FashionMNIST/raw`, checking their MD5."""
    folder = raw_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in MD5.items():
        target = folder / name
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        log(f"downloading {MIRROR}{name}")
        try:
            with urllib.request.urlopen(MIRROR + name, timeout=60) as response, atomic_open(target) as handle:
                shutil.copyfileobj(response, handle)
        except OSError as error:
            raise UserError(f"could not download {MIRROR}{name}: {error}") from None
        if hashlib.md5(target.read_bytes()).hexdigest() != md5:
            target.unlink()
            raise UserError(f"{name} downloaded with the wrong checksum; try again")
    log(f"FashionMNIST: the four official files are in {folder} (MD5 checked); the run goes on with them")


class FashionMNIST:
    """The official train (60,000) or test (10,000) set: `images` uint8 [N, 1, 28, 28], `labels` int64 [N]."""

    batched = True
    classes = CLASSES

    def __init__(self, data_dir, train=True):
        folder = raw_dir(data_dir)
        if not folder.is_dir():
            raise UserError(f"FashionMNIST folder {folder} does not exist; {HOW_TO_GET}")
        image_name, label_name = FILES["train" if train else "test"]
        image_path, label_path = find_file(folder, image_name), find_file(folder, label_name)
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dim() != 3 or labels.dim() != 1:
            raise UserError(f"{image_path} must hold images and {label_path} labels; are the files swapped?")
        if len(images) != len(labels):
            raise UserError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
        if int(labels.max()) >= len(CLASSES):
            raise UserError(f"{label_path} holds label {int(labels.max())}; FashionMNIST labels are 0..9")
        self.images = images.unsqueeze(1)
        self.labels = labels.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def get_batch(self, indices):
        return self.images[indices], self.labels[indices]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_SUFFIXES = ("-idx3-ubyte", "-idx3-ubyte.gz", ".idx", ".idx.gz")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens 16-bit greyscale PNG
SIDE = 28


def load_image(path):
    """A PNG or JPEG as FashionMNIST draws its images: uint8 [1, 28, 28], grey. A colour image becomes
    grey by Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B); 16-bit grey keeps its top 8
    bits; any other size is resized to 28x28 (bilinear, the aspect ratio not kept; a JPEG first
    shrinks by a power of two while it decodes). Nothing is inverted: FashionMNIST's clothes are
    light on black. None for a file that cannot be decoded."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.draft("L", (SIDE, SIDE))
            if image.mode in SIXTEEN_BIT_MODES:
                image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            image = image.convert("L")
            if image.size != (SIDE, SIDE):
                image = image.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(image)).unsqueeze(0)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


class FashionMNISTImages:
    """Images to predict: the PNG / JPEG files of a folder (hidden files left out) and the images of
    its IDX files (`*-idx3-ubyte[.gz]`, `*.idx[.gz]`), or one IDX file, in the order of their names.
    The rows of an IDX file are named `<file>#<index>`. Items are {"image": uint8 [1, 28, 28],
    "readable": bool}; a file that cannot be decoded comes as zeros with readable False, for the
    predictor to name. `starting_at(n)` leaves out the first n (a prediction continued)."""

    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise UserError(f"input {path} does not exist (expected a folder of PNG/JPEG images or an IDX file)")
        files = [path] if path.is_file() else \
            sorted(entry for entry in path.iterdir() if entry.is_file() and not entry.name.startswith("."))
        self.entries = []  # (name, image file or None, pixels of an IDX image or None)
        for file in files:
            self.entries.extend(self.entries_of(file))
        if not self.entries:
            raise UserError(f"no PNG/JPEG images or IDX files in {path}")
        self.start, self.names = 0, [name for name, _, _ in self.entries]
        self.all_names = self.names

    @staticmethod
    def entries_of(file):
        name = file.name.lower()
        if name.endswith(IMAGE_SUFFIXES):
            return [(file.name, file, None)]
        if name.endswith(IDX_SUFFIXES):
            images = read_idx(file)
            if images.dim() != 3 or tuple(images.shape[1:]) != (SIDE, SIDE):
                raise UserError(f"{file} holds {tuple(images.shape)} values; expected images of 28x28 pixels "
                                "(an idx3-ubyte file)")
            return [(f"{file.name}#{index}", None, images[index]) for index in range(len(images))]
        if "-idx1-ubyte" in name:
            raise UserError(f"{file} is an IDX file of labels, not of images; predict a folder without it, "
                            "or its images file alone")
        raise UserError(f"{file} is neither an image (.png, .jpg, .jpeg) nor an IDX file (*-idx3-ubyte[.gz], "
                        "*.idx[.gz]); move it out of the folder")

    def __len__(self):
        return len(self.entries) - self.start

    def __getitem__(self, index):
        _, file, pixels = self.entries[self.start + index]
        image = pixels.unsqueeze(0) if file is None else load_image(file)
        readable = image is not None
        return {"image": image if readable else torch.zeros(1, SIDE, SIDE, dtype=torch.uint8), "readable": readable}

    def starting_at(self, start):
        """The same inputs without the first `start`, listed once."""
        view = copy.copy(self)
        view.start, view.names = start, self.all_names[start:]
        return view
