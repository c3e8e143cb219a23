"""Evaluate a Carvana segmentation checkpoint on its run's held-out test cars, or predict masks.

    python eval_seg_on_carvana.py --model_path Results/SegOnCarvana/<ts>/UNet_best_ckpt.pth --viz
    python eval_seg_on_carvana.py --model_path .../UNet_best_ckpt.pth --input_dir Dataset/Carvana/test \\
        --submission submission.csv

Test mode writes metrics.json (mean dice, IoU, pixel accuracy, and dice and IoU per image, at
--img_size). With --viz, every --n_snap-th image gets <name>_origin.png, <name>_mask.png,
<name>_pred.png (car white on black, at the original resolution) and <name>_overlay.png.
Prediction mode (--input_dir) writes the Kaggle CSV (img,rle_mask) at each image's original size.
"""
import csv
import gzip
import json
import os
import shutil
import sys
import time
from collections import deque
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path

import numpy as np

from cli.options import EVALUATION, add_option
from eval import EvaluatorBase
from trainer_seg_on_carvana import SegOnCarvanaTask, car_probability
from utils.atomic import atomic_open, write_json_atomic
from utils.errors import UserError
from utils.metrics import dice_iou_per_image
from utils.rle import rle_encode


class SegOnCarvanaEvaluator(EvaluatorBase):
    task_class = SegOnCarvanaTask

    @classmethod
    def add_eval_arguments(cls, parser):
        group = parser.add_argument_group("carvana evaluation")
        add_option(group, "--input_dir", rules=EVALUATION, type=Path, default=None,
                   help="predict masks for the unlabelled images in this folder (e.g. Kaggle's test)")
        add_option(group, "--submission", rules=EVALUATION, type=Path, default=None,
                   help="with --input_dir: the Kaggle CSV to write "
                        "(default <run>/eval/predict[_<tag>]/submission.csv)")

    def __init__(self, argv):
        super().__init__(argv)
        self.per_image = []

    def output_name(self):
        if self.args.input_dir is None:
            return super().output_name()
        return "predict" + (f"_{self.args.tag}" if self.args.tag else "")

    def on_batch(self, batch, outputs, indices):
        from data.carvana import load_mask
        from utils.metrics import binary_masks
        images, masks = batch
        subset = self.datasets[self.args.split]
        dataset = subset.dataset
        dice, iou = dice_iou_per_image(binary_masks(outputs.float(), self.args.threshold),
                                       masks.reshape(len(masks), *outputs.shape[2:]) > 0)
        for row, number in enumerate(indices.tolist()):
            sample = int(subset.indices[number])
            name = dataset.names[sample]
            self.per_image.append({"name": name, "dice": float(dice[row]), "iou": float(iou[row])})
            if self.args.viz and number % self.args.n_snap == 0:
                original = load_original(dataset.image_paths[sample])
                truth = load_mask(dataset.mask_paths[sample]).numpy().astype(bool)
                predicted = car_probability(outputs[row:row + 1], truth.shape)[0] > self.args.threshold
                self.write_pictures(name, original, truth, predicted.cpu().numpy())

    def write_pictures(self, name, original, truth, predicted):
        from PIL import Image
        folder = self.save_path / "viz"
        folder.mkdir(exist_ok=True)
        Image.fromarray(original).save(folder / f"{name}_origin.png")
        if truth is not None:
            Image.fromarray(truth.astype(np.uint8) * 255).save(folder / f"{name}_mask.png")
        Image.fromarray(predicted.astype(np.uint8) * 255).save(folder / f"{name}_pred.png")
        overlay = original.astype(np.float32)
        overlay[predicted] = 0.5 * overlay[predicted] + 0.5 * np.array([255, 0, 0])
        Image.fromarray(overlay.astype(np.uint8)).save(folder / f"{name}_overlay.png")

    def results(self):
        return {"per_image": self.per_image}

    def run(self):
        if self.args.input_dir is None:
            if self.args.submission is not None:
                raise UserError("--submission needs --input_dir, the folder of images to predict")
            return super().run()
        return self.predict_folder()

    @contextmanager
    def output_folder(self):
        """Prediction writes its CSV as it goes, to continue after an interruption: into the output
        folder itself, not a temporary one that an interruption would remove."""
        if self.args.input_dir is None:
            with super().output_folder():
                yield
            return
        yield
        if self.save_path.is_dir() and any(self.save_path.iterdir()):  # else the submission's line names it all
            self.log.info(f"results in {self.save_path}")

    def predict_folder(self):
        """Every image in --input_dir through the task's evaluation loop, streamed into Kaggle's CSV.

        Rows go to `<submission>.partial` as their masks are encoded (on threads, in order), with
        memory flat in the number of images; a second call with the same output continues after
        its last complete row. The finished file (gzipped when the name ends in .gz) replaces the
        partial one atomically, byte for byte what an uninterrupted call writes."""
        from data.carvana import CarvanaImages
        args = self.args
        submission = Path(args.submission) if args.submission else self.save_path / "submission.csv"
        if submission.is_dir():
            raise UserError(f"--submission {submission} is a folder; expected the CSV file to write, "
                            f"such as {submission / 'submission.csv.gz'}")
        self.setup(data=False)
        try:
            submission.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the output folder for {submission}: {error.strerror or error}") from None
        partial = submission.with_name(submission.name + ".partial")
        listing = CarvanaImages(args.input_dir, args.img_size, skip_bad=args.skip_bad, log=self.log)
        made_by = self.made_by()
        done = continued_rows(partial, [path.name for path in listing.all_paths], made_by)
        images = listing.starting_at(done)
        if done:
            self.log.info(f"continuing {partial}: {done} of {len(listing.all_paths)} images are done")
        progress = ImageProgress(len(listing.all_paths), done, self.log)
        unreadable = []
        has_header = partial.is_file() and partial.stat().st_size > 0
        try:
            seconds = self.stream(images, partial, has_header, progress, unreadable)
        except (KeyboardInterrupt, SystemExit):
            self.log.warning(f"interrupted: {partial} keeps the {progress.done} rows written; the same command "
                             "continues it")
            raise
        finally:
            progress.close()
        finish_submission(partial, submission)
        if unreadable:
            self.log.warning(f"{len(unreadable)} image(s) could not be decoded and got an empty mask, first {unreadable[0]}")
        self.log.info(f"wrote {len(listing.all_paths)} masks to {submission} ({len(images)} predicted in {seconds:.1f} s)")
        return {"images": len(listing.all_paths), "unreadable": unreadable, "skipped_files": listing.skipped_files,
                "seconds": seconds}

    def stream(self, images, partial, has_header, progress, unreadable):
        """The rows of `images` appended to `partial`; returns the seconds of the pass."""
        args = self.args
        with open(partial, "a", newline="") as handle, RowWriter(handle, progress) as rows:
            if not has_header:
                handle.write("img,rle_mask\n")

            def encode(batch, logits, indices):
                samples, readable = indices.tolist(), batch["readable"].tolist()
                sizes = [tuple(size) if ok else None for size, ok in zip(batch["size"].tolist(), readable)]
                masks = [None] * len(samples)
                for size, group in groups_by_size(sizes):  # upsampled and thresholded on the device, batched
                    for row, mask in zip(group, (car_probability(logits[group], size) > args.threshold).cpu().numpy()):
                        masks[row] = mask
                for row, sample in enumerate(samples):
                    name = images.names[sample]
                    if masks[row] is None:
                        if not args.skip_bad:
                            raise UserError(f"cannot decode image {args.input_dir / name}; pass --skip_bad to give "
                                            "it an empty mask row instead")
                        unreadable.append(name)
                    rows.add(name, masks[row])
                if args.viz:
                    self.write_viz(masks, samples, images)

            started = time.perf_counter()
            if len(images):  # all rows may be there already, from an interruption just before the end
                self.evaluate("predict", on_batch=encode, loader=self.make_loader(images))
            return time.perf_counter() - started  # the streaming pass: decode, model, encode, write

    def made_by(self):
        """What decides a submission's masks: a partial one continues only if this is unchanged."""
        stat = self.checkpoint_path.stat()
        return {"checkpoint": str(self.checkpoint_path.resolve()), "checkpoint_size": stat.st_size,
                "checkpoint_mtime_ns": stat.st_mtime_ns, "weights": self.weights, "img_size": list(self.args.img_size),
                "threshold": self.args.threshold, "tta": self.args.tta, "input_dir": str(self.args.input_dir.resolve()),
                "amp": self.args.amp and self.args.amp_dtype, "channels_last": self.args.channels_last}

    def write_viz(self, masks, samples, images):
        """Pictures of every --n_snap-th image, with the masks the CSV gets."""
        for mask, sample in zip(masks, samples):
            if (images.start + sample) % self.args.n_snap == 0 and mask is not None:
                self.write_pictures(Path(images.names[sample]).stem, load_original(images.image_paths[sample]),
                                    None, mask)


class RowWriter:
    """Kaggle CSV rows written in order as their RLE strings are encoded on a few threads; at most
    `ahead` masks wait, so memory does not grow with the number of images."""

    AHEAD, THREADS = 64, 4

    def __init__(self, handle, progress):
        from concurrent.futures import ThreadPoolExecutor
        self.handle, self.progress, self.ahead, threads = handle, progress, self.AHEAD, self.THREADS
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.pending = deque()

    def add(self, name, mask):
        """Queue the row of image `name`; `mask` None writes an empty mask."""
        self.pending.append((name, self.pool.submit(rle_encode, mask) if mask is not None else None))
        if len(self.pending) > self.ahead:
            self.write(len(self.pending) - self.ahead)

    def write(self, count):
        for _ in range(count):
            name, future = self.pending.popleft()
            self.handle.write(f"{csv_field(name)},{future.result() if future is not None else ''}\n")
        self.handle.flush()  # a complete row survives an interruption
        self.progress.update(count)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.write(len(self.pending))
        else:  # the rows encoded so far are kept, in order; the rest is redone when continued
            self.write(sum(1 for _ in takewhile(lambda item: item[1] is None or item[1].done(), self.pending)))
        self.pool.shutdown(wait=True, cancel_futures=True)


class ImageProgress:
    """Progress in images: a bar on a terminal; elsewhere (a batch job's log) a line every LINE_EVERY_S
    seconds and at the end."""

    LINE_EVERY_S = 30.0

    def __init__(self, total, done, log):
        from tqdm import tqdm
        self.total, self.done, self.log, self.last_line = total, done, log, time.monotonic()
        self.bar = tqdm(total=total, initial=done, unit="image", desc="predict", dynamic_ncols=True) \
            if sys.stderr.isatty() else None

    def update(self, count):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif count and (time.monotonic() - self.last_line >= self.LINE_EVERY_S or self.done == self.total):
            self.last_line = time.monotonic()
            self.log.info(f"predicted {self.done} of {self.total} images")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def groups_by_size(sizes):
    """The rows of a batch grouped by original size, so that each group is upsampled in one call."""
    groups = {}
    for row, size in enumerate(sizes):
        if size is not None:
            groups.setdefault(size, []).append(row)
    return groups.items()


def continued_rows(partial, names, made_by):
    """How many images a partial submission holds complete rows for, after cutting off a row an
    interruption left half-written. Its rows must be those of the first `names`, and its masks
    made as `made_by` says (recorded beside it, in <partial>.json)."""
    record = partial.with_name(partial.name + ".json")
    if not partial.is_file():
        write_json_atomic(made_by, record)
        return 0
    try:
        recorded = json.loads(record.read_text()) if record.is_file() else None
    except ValueError:
        raise UserError(f"{record} is not readable JSON (a write cut short?); delete it and {partial} "
                        "to start the submission over") from None
    if recorded != made_by:
        changed = sorted(key for key in made_by if (recorded or {}).get(key) != made_by[key])
        raise UserError(f"{partial} was started with another {', '.join(changed)}; continue it with the same "
                        "checkpoint and options, or delete it to start over")
    text = partial.read_text()
    complete = text[:text.rfind("\n") + 1]
    lines = complete.splitlines()
    if not lines or lines[0] != "img,rle_mask":
        with open(partial, "w", newline=""):
            pass  # nothing usable: start over
        return 0
    done = [next(csv.reader([line]))[0] for line in lines[1:]]
    if done != names[:len(done)]:
        raise UserError(f"{partial} holds rows of other images than the first {len(done)} in the input folder; "
                        "delete it to start over")
    if len(complete) != len(text):
        with open(partial, "r+", newline="") as handle:
            handle.truncate(len(complete.encode()))
    return len(done)


def csv_field(text):
    """`text` as one CSV field: quoted, its quotes doubled, when it holds a comma, a quote or a line break."""
    if not any(char in text for char in ',"\r\n'):
        return text
    return '"' + text.replace('"', '""') + '"'


def finish_submission(partial, submission):
    """Move the complete CSV into place atomically; gzipped (reproducibly: no name, no time) for .gz."""
    if submission.suffix.lower() == ".gz":
        with atomic_open(submission, "wb") as handle, open(partial, "rb") as source, \
                gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as packed:
            shutil.copyfileobj(source, packed)
        partial.unlink()
    else:
        os.replace(partial, submission)
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)


def load_original(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


if __name__ == "__main__":
    sys.exit(SegOnCarvanaEvaluator.main())
