"""Kaggle's submission pipeline (eval_seg_on_carvana.py --input_dir --submission, in a fresh
process) on generated photos of Carvana's size, against the slowest of its stages measured alone
in this process (decoding and resizing, the model, upsampling + thresholding + RLE) and against
the stages one after the other; and its peak memory on 4x the images against 1x.
"""
import os
import time

from measure import MALLOC_ENV, log, make_row, synchronize
from toolkit import carvana_model, predict_child, train_carvana
from unet import UNET_BATCH

# Two models: the task's default (UNet base 32 at 320x480, what a Kaggle run trains) and a small one,
# whose model stage is so cheap on the CPU that decoding and encoding, on the same cores, weigh as much.
PREDICT = {"full": {"images": 64, "photo": (1280, 1918), "models": [((320, 480), 32), ((128, 192), 16)]},
           "quick": {"images": 16, "photo": (320, 480), "models": [((64, 96), 8)]}}


def predict_section(options, scratch):
    """Kaggle's submission pipeline (eval_seg_on_carvana.py --input_dir --submission) against the
    slowest of its stages measured alone, for each model of PREDICT; and its peak memory at 1x and
    4x the images (with the first model)."""
    from data.synthetic_carvana import write_carvana
    settings = PREDICT["quick" if options.quick else "full"]
    count, (height, width) = settings["images"], settings["photo"]
    root = scratch / "predict"
    log(f"writing {4 * count} synthetic photos of {width}x{height} to {root}")
    write_carvana(root / "photos", n_cars=count, views=4, size=(height, width), seed=options.seed)
    photos = sorted((root / "photos" / "train").glob("*.jpg"))
    for name, chosen in (("1x", photos[:count]), ("4x", photos)):
        (root / name).mkdir()
        for path in chosen:
            (root / name / path.name).symlink_to(path)
    small = write_carvana(root / "small", n_cars=4, views=2, size=(64, 96), seed=options.seed)
    rows, setups = [], []
    for index, (img_size, base_width) in enumerate(settings["models"]):
        model_rows, setup = predict_model(options, root, small, count, (height, width), img_size, base_width,
                                          memory=index == 0)
        rows += model_rows
        setups.append(setup)
    details = {"train_samples": {}, "eval_samples": {}, "setup": "; ".join(setups) + (
        "; toolkit column = the submission pipeline, hand-written column = the slowest stage alone "
        "(pipeline row), the stages one after the other (serial row) or the pipeline on 1x the images (memory row)")}
    return rows, details


def predict_model(options, root, small, count, photo, img_size, base_width, memory):
    """The rows of one model: each stage alone, the pipeline against the slowest and against the
    stages in sequence, and (with `memory`) peak memory at 4x against 1x the images."""
    (height, width), workers = photo, min(4, os.cpu_count() or 1)
    label = f"UNet base {base_width} at {img_size[0]}x{img_size[1]}"
    log(f"prediction with {label}")
    runs_dir = root / f"runs_{base_width}_{img_size[0]}"
    trainer_argv = ["--data_dir", str(small), "--output_dir", str(runs_dir), "--img_size", *map(str, img_size),
                    "--base_width", str(base_width), "--n_epoch", "1", "--val_ratio", "0.25",
                    "--test_ratio", "0.25", "--gpu_devices", "0" if options.device == "cuda" else "cpu"]
    train_carvana(trainer_argv)
    checkpoint = next(runs_dir.glob("*/UNet_best_ckpt.pth"))
    environment = {**os.environ, **MALLOC_ENV}
    stages = stage_rates(root / "1x", count, photo, img_size, trainer_argv, workers)
    slowest = min(stages, key=stages.get)

    runs = {}
    for name in ("1x", "4x") if memory else ("1x",):
        argv = ["--model_path", checkpoint, "--input_dir", root / name, "--submission", root / f"{name}_{base_width}.csv.gz",
                "--num_workers", workers, "--eval_batch_size", UNET_BATCH]
        runs[name] = predict_child(argv, environment)
    pipeline = count / runs["1x"][0]
    rows = [make_row("predict", f"stage {base_width}", f"{label}: stage alone, images/s: {name}", {"toolkit": [rate]},
                     "higher", compare=False) for name, rate in stages.items()]
    rows.append(make_row("predict", f"pipeline {base_width}", f"{label}: submission images/s vs slowest stage ({slowest})",
                         {"toolkit": [pipeline], "handwritten": [stages[slowest]]}, "higher"))
    serial = 1 / sum(1 / rate for rate in stages.values())  # one stage after the other, nothing overlapped
    rows.append(make_row("predict", f"serial {base_width}", f"{label}: submission images/s vs the stages one after the other",
                         {"toolkit": [pipeline], "handwritten": [serial]}, "higher"))
    if memory:
        rows.append(make_row("predict", "flat", f"{label}: peak RSS MiB, {4 * count} vs {count} images",
                             {"toolkit": [runs["4x"][1]], "handwritten": [runs["1x"][1]]}, "lower"))
    setup = (f"{label}: photos {width}x{height}, {count}" + (f" and {4 * count}" if memory else "")
             + f" images, {workers} decoding workers, batch {UNET_BATCH}")
    return rows, setup


def stage_rates(folder, count, photo, img_size, trainer_argv, workers):
    """Images/s of each stage of the pipeline alone, in this process, on the `count` photos of `folder`:
    decoding and resizing (in DataLoader workers), the model of `trainer_argv`, and upsampling to the
    `photo` size, thresholding and RLE encoding."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from data.carvana import CarvanaImages
    from trainer_seg_on_carvana import car_probability
    from utils.rle import rle_encode
    loader = torch.utils.data.DataLoader(CarvanaImages(folder, img_size), batch_size=UNET_BATCH, num_workers=workers)
    start = time.perf_counter()
    batches = [batch["image"] for batch in loader]
    decode_seconds = time.perf_counter() - start
    model, device = carvana_model(trainer_argv)
    with torch.inference_mode():
        model(batches[0].to(device).float().div_(255))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        logits = [model(batch.to(device).float().div_(255)) for batch in batches]
        synchronize(device)
        model_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(rle_encode, mask) for batch in logits
                       for mask in (car_probability(batch, photo) > 0.5).cpu().numpy()]
            [future.result() for future in futures]
        encode_seconds = time.perf_counter() - start
    return {"decode+resize": count / decode_seconds, "model": count / model_seconds,
            "upsample+threshold+RLE": count / encode_seconds}
