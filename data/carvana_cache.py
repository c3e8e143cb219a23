"""The decoded tensors of a CarvanaDataset: every pair decoded up front, and the file that keeps them.

`decode_pairs` decodes all pairs into two uint8 tensors, in DataLoader workers when asked, and
hands each failure to the dataset to skip or raise. `DiskCache` reads and writes
``carvana_{H}x{W}.pt`` and says why a file it finds does not fit the dataset; it matches the
images by file names and size only.
"""
import os

import torch
from torch.utils.data import DataLoader, Dataset

from utils.errors import UserError


class _PairDecoder(Dataset):
    """Decodes pairs for filling the cache and reports failures instead of raising them.

    It holds only paths and the module-level `load_pair`, so sending it to DataLoader workers is
    cheap, and a bad file comes back as a message the main process can skip or raise, not as a
    worker traceback.
    """

    def __init__(self, load_pair, image_paths, mask_paths, img_size):
        self.load_pair = load_pair
        self.image_paths = image_paths
        self.mask_paths = mask_paths
        self.img_size = img_size

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, index):
        try:
            image, mask = self.load_pair(self.image_paths[index], self.mask_paths[index], self.img_size)
        except UserError as error:
            return index, None, None, str(error)
        return index, image, mask, None


def decode_pairs(load_pair, image_paths, mask_paths, img_size, num_workers, skip_or_raise):
    """Decode every pair with `load_pair` into images [N, 3, H, W] and masks [N, 1, H, W], uint8.

    A pair that cannot be decoded goes to `skip_or_raise(index, message)`, which raises or lets
    it be dropped. Returns (images, masks, keep): the rows of the dropped pairs are left out, and
    keep[index] says whether pair `index` stayed.
    """
    height, width = img_size
    count = len(image_paths)
    images = torch.empty((count, 3, height, width), dtype=torch.uint8)
    masks = torch.empty((count, 1, height, width), dtype=torch.uint8)
    decoder = _PairDecoder(load_pair, image_paths, mask_paths, img_size)
    # batch_size=None hands over single items as they are, failures included. A private
    # generator: the loader's iterator would otherwise draw its worker seed from the global
    # random state, and filling the cache would change the run that follows.
    loader = DataLoader(decoder, batch_size=None, num_workers=num_workers, generator=torch.Generator())
    keep = [True] * count
    for index, image, mask, error in loader:
        if error is not None:
            keep[index] = False
            skip_or_raise(index, error)
            continue
        images[index] = image
        masks[index] = mask
    if not all(keep):
        kept_rows = torch.tensor(keep)
        images = images[kept_rows]
        masks = masks[kept_rows]
    return images, masks, keep


class DiskCache:
    """The file at `path` holding a dataset's decoded tensors at img_size, the names of the images
    they hold and of those found unreadable when it was built. Messages go through `log`."""

    KEYS = {"img_size", "names", "skipped", "images", "masks"}

    def __init__(self, path, img_size, log):
        self.path = path
        self.img_size = img_size
        self.log = log

    def remove_stale_temporaries(self):
        """The temporary files of cache writes whose process was killed: each is as large as the cache."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            pid = stale.name[len(self.path.name) + 2:-len(".tmp")]
            if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
                stale.unlink(missing_ok=True)
                self.log.warning(f"removed {stale}, left by a cache write that was killed")

    def load(self, names, skip_bad):
        """The stored dict if it was built from the images `names` at this size, else None.

        `names` is the dataset's sorted list of images. A file that does not fit is to be
        rebuilt, and the log says why.
        """
        self.remove_stale_temporaries()
        if not self.path.is_file():
            return None
        try:
            cached = torch.load(self.path, weights_only=True)
        except Exception as error:  # any unreadable cache is rebuilt, never trusted
            self.log.warning(f"rebuilding {self.path}: cannot read it ({error})")
            return None
        reason = self.mismatch(cached, names, skip_bad)
        if reason:
            self.log.info(f"rebuilding {self.path}: {reason}")
            return None
        return cached

    def mismatch(self, cached, names, skip_bad):
        """Say why the cached tensors do not fit these images, or return '' when they do."""
        if not isinstance(cached, dict) or not self.KEYS <= cached.keys():
            return "it is not a Carvana cache file"
        if list(cached["img_size"]) != list(self.img_size):
            return f"it holds size {cached['img_size']}, not {list(self.img_size)}"
        cached_names = sorted(cached["names"] + cached["skipped"])
        if cached_names != names:
            added = len(set(names) - set(cached_names))
            removed = len(set(cached_names) - set(names))
            return f"the images changed ({added} added, {removed} removed)"
        if cached["skipped"] and not skip_bad:
            return f"it skipped {len(cached['skipped'])} unreadable images and skip_bad is off"
        return ""

    def save(self, images, masks, names, unreadable):
        """Write the tensors of the images `names`, and the `unreadable` ones left out of them."""
        payload = {
            "img_size": list(self.img_size),
            "names": list(names),
            "skipped": sorted(unreadable),
            "images": images,
            "masks": masks,
        }
        folder = self.path.parent
        # Written beside the target and renamed, so an interrupted run never leaves a
        # half-written cache that a later run would load; the process id keeps two runs
        # building the same cache from writing into one file.
        temporary_path = folder / f".{self.path.name}.{os.getpid()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(temporary_path, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary_path, self.path)
        except OSError as error:
            temporary_path.unlink(missing_ok=True)
            raise UserError(f"cannot write the cache {self.path}: {error}; "
                            f"pass a writable cache_dir") from error
        except BaseException:
            temporary_path.unlink(missing_ok=True)
            raise
        self.log.info(f"wrote {self.path}")


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
