"""The Carvana UNet's training speed: SegOnCarvanaTrainer with its memory cache, the same trainer
decoding every pair every epoch (--cache none), and a plain loop over preloaded tensors with the
same UNet, Adam, bce+dice loss and batch, taking turns epoch by epoch in this process; and the
cache's first fill. UNET_BATCH is the task's default batch size, which the prediction section shares.
"""
import time

from measure import log, make_row, rates, synchronize
from toolkit import close, train_set, train_turn, trainer_for_turns

# In-process and sequential: a UNet step is long enough (tenths of a second) for start-up and
# allocator effects not to matter. Contenders take turns epoch by epoch.
UNET = {"full": {"cars": 6, "views": 8, "photo": (1280, 1918), "img_size": (128, 192), "base_width": 16,
                 "epochs": 3, "repeats": 2},
        "quick": {"cars": 7, "views": 2, "photo": (320, 480), "img_size": (64, 96), "base_width": 8,
                  "epochs": 2, "repeats": 1}}
UNET_BATCH = 8


def unet_toolkit(data_dir, output_dir, settings, cache, device):
    """A SegOnCarvanaTrainer set up for timing: returns (trainer, its cache fill seconds)."""
    height, width = settings["img_size"]
    argv = ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--img_size", str(height), str(width),
            "--base_width", str(settings["base_width"]), "--batch_size", str(UNET_BATCH), "--cache", cache,
            "--augment", "false", "--val_ratio", "0.15", "--test_ratio", "0.15", "--n_epoch", "1000",
            "--gpu_devices", "0" if device == "cuda" else "cpu"]
    return trainer_for_turns("carvana", argv)


def handwritten_unet(images, masks, base_width, seed, device):
    """A plain loop over preloaded tensors with the toolkit's UNet, Adam and bce+dice loss:
    returns run_epoch(epoch), which trains one epoch and returns its seconds."""
    import torch

    from loss.dice_loss import BCEDiceLoss
    from model.unet import UNet

    torch.manual_seed(seed)
    model = UNet(3, 1, depth=4, base_width=base_width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = BCEDiceLoss()

    def run_epoch(epoch):
        synchronize(device)
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(order), UNET_BATCH):
            batch = order[start:start + UNET_BATCH].to(device)
            loss = loss_fn(model(images[batch].float().div_(255)), masks[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        return time.perf_counter() - started
    return run_epoch


def unet_section(options, scratch):
    """Carvana UNet: the toolkit with its cache, and without, against a loop over preloaded tensors."""
    import torch

    from data.synthetic_carvana import write_carvana

    settings = UNET["quick" if options.quick else "full"]
    device = torch.device(options.device)
    data_dir = scratch / "carvana"
    log(f"writing {settings['cars'] * settings['views']} synthetic Carvana pairs of {settings['photo']} to {data_dir}")
    write_carvana(data_dir, n_cars=settings["cars"], views=settings["views"], size=settings["photo"], seed=options.seed)
    cached, fill_seconds = unet_toolkit(data_dir, scratch / "unet_runs", settings, "memory", options.device)
    decoding, _ = unet_toolkit(data_dir, scratch / "unet_runs", settings, "none", options.device)
    dataset = train_set(cached)
    images, masks = (tensor.to(device) for tensor in dataset.get_batch(torch.arange(len(dataset))))
    contenders = {"toolkit": lambda epoch: train_turn(cached),
                  "handwritten": handwritten_unet(images, masks, settings["base_width"], options.seed, device),
                  "naive": lambda epoch: train_turn(decoding)}
    seconds = {name: [] for name in contenders}
    for repeat in range(settings["repeats"]):
        log(f"unet repeat {repeat + 1}/{settings['repeats']}")
        for epoch in range(settings["epochs"]):
            for name, run_epoch in contenders.items():
                epoch_seconds = run_epoch(repeat * settings["epochs"] + epoch)
                if epoch > 0:  # the first epoch of each repeat is a warm-up
                    seconds[name].append(epoch_seconds)
    for trainer in (cached, decoding):
        close(trainer)
    samples = len(dataset)
    rows = [make_row("unet", "train", "train samples/s", {name: rates(samples, values) for name, values in seconds.items()},
                     "higher"),
            make_row("unet", "fill", "cache first fill s", {"toolkit": [fill_seconds]}, "lower", compare=False)]
    details = {"train_samples": {name: samples for name in contenders}, "eval_samples": {},
               "setup": f"UNet base {settings['base_width']}, {settings['img_size'][0]}x{settings['img_size'][1]}, "
                        f"batch {UNET_BATCH}, photos {settings['photo'][1]}x{settings['photo'][0]}; "
                        "toolkit = --cache memory, naive = the toolkit with --cache none (decoding every epoch), "
                        "hand-written = a loop over preloaded tensors"}
    return rows, details
