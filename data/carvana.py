"""The Kaggle Carvana Image Masking Challenge: car photos and their binary masks.

Unzip Kaggle's train.zip and train_masks.zip into one folder, so that it holds

    <root>/train/<car_id>_<NN>.jpg
    <root>/train_masks/<car_id>_<NN>_mask.gif

Each car is photographed from 16 angles (NN = 01..16). Split by `groups` (the car id), not by
image, or the validation set holds other views of the cars the model trained on.

Images come out as uint8 [3, H, W] and masks as uint8 [1, H, W] with values 0/1; the trainer
converts them to float on the device, which keeps the data loader and any cache four times smaller.

Limits: with ``cache="none"`` a JPEG whose body is corrupt is only found when it is first read,
so `skip_bad` cannot skip it and reading it raises `UserError`; the cached modes decode
everything up front and can skip it. The disk cache is matched by file names and size only:
delete the cache file after editing images in place. The cache itself is data/carvana_cache.py.
"""
import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.carvana_cache import DiskCache, decode_pairs
from utils.errors import UserError

LOG = logging.getLogger("torch_template")  # the run's logger (utils/logger.py)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = ("_mask.gif", "_mask.png")
CACHE_MODES = ("none", "memory", "disk")
EXPECTED_LAYOUT = ("expected <root>/train/*.jpg and <root>/train_masks/*_mask.gif "
                   "as in Kaggle's train.zip and train_masks.zip")

# Pillow raises these for files that are missing, truncated or not images at all.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens 16-bit greyscale PNG and TIFF
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_mask(path):
    """Read a mask file as a uint8 tensor [H, W] holding 0 (background) and 1 (car)."""
    return torch.from_numpy(_read_mask_array(Path(path)))


def _read_mask_array(path):
    try:
        with Image.open(path) as mask_image:
            # Converting through the palette makes Kaggle's 0/1 palette GIFs and re-saved
            # 0/255 grey images look the same: black and white in both.
            grey = np.array(mask_image.convert("L"))
    except UNREADABLE_IMAGE_ERRORS as error:
        raise UserError(f"cannot read mask {path}: {error}") from error
    # A grey image that stores the classes as 0/1 directly would be all background after
    # thresholding at mid-grey.
    threshold = 0 if grey.max(initial=0) <= 1 else 127
    return (grey > threshold).astype(np.uint8)


def _checked_img_size(img_size):
    """Return img_size as a (height, width) pair of positive ints, or raise UserError."""
    try:
        height, width = (int(side) for side in img_size)
    except (TypeError, ValueError) as error:
        raise UserError(f"img_size {img_size!r} must be two numbers (height, width)") from error
    if height <= 0 or width <= 0:
        raise UserError(f"img_size {img_size!r} must be positive (height, width)")
    return height, width


def _list_images(folder):
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _load_image(path, img_size):
    """Decode an image to uint8 [3, H, W] at img_size; also return its original (width, height)."""
    height, width = img_size
    try:
        with Image.open(path) as image:
            original_size = image.size
            # For a JPEG this lets the decoder shrink by 2, 4 or 8 while decoding, which makes
            # reading a 1918x1280 photo several times faster; other formats ignore it.
            image.draft("RGB", (width, height))
            if image.mode in SIXTEEN_BIT_MODES:  # convert("RGB") would clip every value above 255 to white
                image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
            image = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    except UNREADABLE_IMAGE_ERRORS as error:
        raise UserError(f"cannot decode image {path}: {error}") from error
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(), original_size


def _header_size(path, kind):
    """Read (width, height) from a file's header without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except UNREADABLE_IMAGE_ERRORS as error:
        raise UserError(f"cannot read {kind} {path}: {error}") from error


def _size_mismatch_message(mask_path, mask_size, image_path, image_size):
    return (f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} pixels but its image {image_path} "
            f"is {image_size[0]}x{image_size[1]}; a mask must have its image's size")


def _load_pair(image_path, mask_path, img_size):
    """Decode an image and its mask, check that their sizes agree, and resize both."""
    height, width = img_size
    image, image_size = _load_image(image_path, img_size)
    mask = _read_mask_array(mask_path)
    mask_size = (mask.shape[1], mask.shape[0])
    if mask_size != image_size:
        raise UserError(_size_mismatch_message(mask_path, mask_size, image_path, image_size))
    # Nearest neighbour keeps the mask binary; any smoothing filter would invent fractions.
    resized_mask = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return image, torch.from_numpy(np.array(resized_mask)).unsqueeze(0)


class CarvanaDataset(Dataset):
    """Carvana training images and masks, resized to img_size (height, width).

    cache="none" decodes files on every access. cache="memory" decodes everything once into
    `images` [N, 3, H, W] and `masks` [N, 1, H, W]; cache="disk" does the same and keeps the
    tensors in ``cache_dir / f"carvana_{H}x{W}.pt"`` (default ``root / ".cache"``) for the next
    run. When cached, `batched` is True and `get_batch` slices a whole batch at once, which is
    much faster than a DataLoader collating single items.

    skip_bad=True skips images without a mask, unreadable files and masks whose size differs
    from their image's, with a warning through `log` (a logging.Logger), and lists their names in
    `skipped`; otherwise they raise UserError.
    """

    def __init__(self, root, img_size=(320, 480), cache="none", cache_dir=None, skip_bad=False,
                 num_workers=0, log=LOG):
        self.root = Path(root)
        self.img_size = _checked_img_size(img_size)
        if cache not in CACHE_MODES:
            raise UserError(f"cache {cache!r} is not one of {', '.join(CACHE_MODES)}")
        self.cache = cache
        self.skip_bad = skip_bad
        self.num_workers = num_workers
        self.log = log
        self.skipped = []
        self.unreadable = []
        self.batched = cache != "none"
        self.images = None
        self.masks = None

        self._find_pairs()
        height, width = self.img_size
        cache_folder = self.root / ".cache" if cache_dir is None else Path(cache_dir)
        self.cache_path = cache_folder / f"carvana_{height}x{width}.pt" if cache == "disk" else None
        self.disk_cache = DiskCache(self.cache_path, self.img_size, log) if cache == "disk" else None

        if cache == "disk" and self._load_cache():
            return
        self._check_sizes()
        if cache != "none":
            self._fill_cache()
        if cache == "disk":
            self.disk_cache.save(self.images, self.masks, self.names, self.unreadable)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        if self.batched:
            return self.images[index], self.masks[index]
        return _load_pair(self.image_paths[index], self.mask_paths[index], self.img_size)

    def get_batch(self, indices):
        """Return (images[indices], masks[indices]) in one indexing step; needs a cache."""
        if not self.batched:
            raise RuntimeError("get_batch needs cache='memory' or cache='disk'")
        return self.images[indices], self.masks[indices]

    def _skip_or_raise(self, index, message, unreadable=True):
        """Drop pair `index` with a warning under skip_bad, else raise UserError(message).

        `unreadable` pairs are remembered in the disk cache; a missing mask is not, because
        the folder scan finds it again on every run.
        """
        if not self.skip_bad:
            raise UserError(message)
        self.log.warning(f"skipping {self.names[index]}: {message}")
        self.skipped.append(self.names[index])
        if unreadable:
            self.unreadable.append(self.names[index])

    def _keep(self, keep):
        """Keep only the pairs whose flag in `keep` is true."""
        self.names = [name for name, kept in zip(self.names, keep) if kept]
        self.image_paths = [path for path, kept in zip(self.image_paths, keep) if kept]
        self.mask_paths = [path for path, kept in zip(self.mask_paths, keep) if kept]
        self.groups = [name.rsplit("_", 1)[0] for name in self.names]

    def _find_pairs(self):
        image_folder = self.root / "train"
        mask_folder = self.root / "train_masks"
        for folder in (self.root, image_folder, mask_folder):
            if not folder.is_dir():
                raise UserError(f"Carvana folder {folder} does not exist; {EXPECTED_LAYOUT}")
        image_paths = sorted(_list_images(image_folder), key=lambda path: path.stem)
        if not image_paths:
            raise UserError(f"no .jpg/.jpeg/.png images in {image_folder}; {EXPECTED_LAYOUT}")

        self.names = [path.stem for path in image_paths]
        self.image_paths = image_paths
        self.mask_paths = []
        keep = []
        for index, image_path in enumerate(image_paths):
            candidates = [mask_folder / f"{image_path.stem}{suffix}" for suffix in MASK_SUFFIXES]
            mask_path = next((path for path in candidates if path.is_file()), candidates[0])
            self.mask_paths.append(mask_path)
            keep.append(mask_path.is_file())
            if not keep[-1]:
                self._skip_or_raise(index, f"image {image_path} has no mask; expected {mask_path}",
                                    unreadable=False)
        self._keep(keep)
        if not self.names:
            raise UserError(f"no image in {image_folder} has a mask in {mask_folder}; "
                            f"{EXPECTED_LAYOUT}")

    def _check_sizes(self):
        """Compare image and mask sizes from the file headers, before any slow decoding.

        A wrong mask then fails at once instead of in the middle of an epoch.
        """
        keep = []
        for index, (image_path, mask_path) in enumerate(zip(self.image_paths, self.mask_paths)):
            try:
                image_size = _header_size(image_path, "image")
                mask_size = _header_size(mask_path, "mask")
            except UserError as error:
                keep.append(False)
                self._skip_or_raise(index, str(error))
                continue
            keep.append(image_size == mask_size)
            if image_size != mask_size:
                self._skip_or_raise(index, _size_mismatch_message(mask_path, mask_size,
                                                                  image_path, image_size))
        self._keep(keep)
        self._require_some_left()

    def _require_some_left(self):
        if not self.names:
            raise UserError(f"every image in {self.root / 'train'} was skipped as unreadable "
                            f"or mismatched")

    def _fill_cache(self):
        started = time.perf_counter()
        self.images, self.masks, keep = decode_pairs(_load_pair, self.image_paths, self.mask_paths, self.img_size,
                                                     self.num_workers, self._skip_or_raise)
        if not all(keep):
            self._keep(keep)
            self._require_some_left()
        height, width = self.img_size
        megabytes = (self.images.numel() + self.masks.numel()) / 1e6
        self.log.info(f"cached {len(self.names)} Carvana images at {height}x{width} "
                 f"({megabytes:.1f} MB) in {time.perf_counter() - started:.1f} s")

    def _load_cache(self):
        """Use the disk cache if it was built from the same files at the same size."""
        cached = self.disk_cache.load(self.names, self.skip_bad)
        if cached is None:
            return False
        kept = set(cached["names"])
        for index, name in enumerate(self.names):
            if name not in kept:
                self._skip_or_raise(index, f"{self.image_paths[index]} was unreadable "
                                           f"when {self.cache_path} was built")
        self._keep([name in kept for name in self.names])
        self.images = cached["images"]
        self.masks = cached["masks"]
        self.log.info(f"loaded {len(self.names)} Carvana images from {self.cache_path}")
        return True


class CarvanaImages(Dataset):
    """Unlabelled images for prediction, such as Kaggle's test folder (100,064 photos).

    Every file in `input_dir` is an image (.jpg/.jpeg/.png); hidden files (names starting with a
    dot) are left out. Another file is an error, or with `skip_bad` a warning through `log` (a Logger) and
    no row. Items are {"image": uint8 [3, H, W] at img_size, "readable": bool, "size": the
    original (height, width)}: an image that cannot be decoded comes as zeros (size too) with
    readable False, for the predictor to report or to give an empty mask. `size` and `names` let
    a predictor resize its mask back and name its row after the file. `starting_at(n)` leaves out
    the first n images (a prediction continued).
    """

    def __init__(self, input_dir, img_size, skip_bad=False, log=LOG):
        self.input_dir = Path(input_dir)
        self.img_size = _checked_img_size(img_size)
        if not self.input_dir.is_dir():
            raise UserError(f"input folder {self.input_dir} does not exist")
        files = sorted(path for path in self.input_dir.iterdir() if path.is_file() and not path.name.startswith("."))
        others = [path for path in files if path.suffix.lower() not in IMAGE_SUFFIXES]
        if others and not skip_bad:
            raise UserError(f"{others[0]} is not an image (expected .jpg, .jpeg or .png; {len(others)} such file(s) "
                            f"in {self.input_dir}); move them out, or pass --skip_bad to leave them out")
        if others:
            log.warning(f"left out {len(others)} file(s) that are not images, first {others[0].name}")
        self.skipped_files = [path.name for path in others]
        self.all_paths = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
        if not self.all_paths:
            raise UserError(f"no .jpg/.jpeg/.png images in {self.input_dir}")
        self.start, self.image_paths, self.names = 0, self.all_paths, [path.name for path in self.all_paths]

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, index):
        try:
            image, (width, height) = _load_image(self.image_paths[index], self.img_size)
            return {"image": image, "readable": True, "size": torch.tensor((height, width))}
        except UserError:
            return {"image": torch.zeros(3, *self.img_size, dtype=torch.uint8), "readable": False,
                    "size": torch.zeros(2, dtype=torch.long)}

    def starting_at(self, start):
        """The same images without the first `start` (a prediction continued), listed once."""
        view = copy.copy(self)
        view.start, view.image_paths = start, self.all_paths[start:]
        view.names = [path.name for path in view.image_paths]
        return view
