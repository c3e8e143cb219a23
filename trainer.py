"""TrainerBase: the train / validate / test workflow, written once for every task.

A task subclasses TrainerBase and overrides small hooks; it never copies the loop:

    add_task_arguments(parser)    classmethod: the task's options and `parser.set_defaults(...)`
    build_datasets()              -> (pool, test_pool): train+val come from `pool`; the test set is
                                     `test_pool`, or is carved from `pool` by --test_ratio when None
                                     (default: the --data_type entry of data/data_entry.py)
    build_model()                 -> nn.Module (default: the --model_type entry of model/model_entry.py)
    build_loss()                  -> callable(outputs, targets) -> scalar loss
    prepare_batch(batch, train, generator)
                                  on the device: dtype conversion, normalisation, and (train only)
                                  augmentation drawn from `generator`, seeded by epoch and step
    forward_batch(model, batch)   -> (loss, outputs) for one batch, under autocast
    batch_stats(batch, outputs)   -> dict of tensors to sum over the epoch (counts, sums)
    compute_metrics(totals)       -> dict of floats from the summed stats
    report(phase, totals, epoch)  extra logging (per-class accuracy, ...); optional
    visualize(writer, epoch, batch, outputs)
                                  the first validation batch of each epoch, for TensorBoard

The workflow (`fit`): options -> seed -> datasets -> model -> optimizer and scheduler -> run
folder, config, split, log, TensorBoard -> epochs of train + validate (checkpoints, early stopping)
-> test of the best checkpoint -> metrics.json. The same `run_epoch` serves train, validation and
test, and the evaluator.

Guarantees and limits:
- Checkpoints hold the whole training state (model without wrapper prefixes, optimizer, scheduler,
  grad scaler, early stopper, epoch, step, RNG states, partial epoch sums, config) as tensors and
  plain values; they load with `torch.load(path, weights_only=True)` and are written atomically.
- `--resume` continues a run exactly: the data order is a function of seed and epoch, a mid-epoch
  checkpoint (`--save_every_n_steps`) skips exactly the batches already consumed.
- Ctrl+C / SIGTERM finish the current optimizer step, save, log the resume command and exit
  non-zero; a second Ctrl+C stops at once. Any other exception saves the state of the last
  completed step (the random state is the one at the crash) and re-raises.
- A NaN or infinite loss stops the run without overwriting the last good checkpoint, unless
  `--skip_nonfinite` is given, which skips such batches and counts them.
- Distributed runs are launched by torchrun; rank 0 alone writes files. Learning-rate schedules
  step per epoch.
"""
import io
import json
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from data.loader import BatchLoader, EpochBatchSampler, Subset
from data.split import sample_fraction, split_by_group
from utils import distributed
from utils.checkpoint import load_checkpoint, load_weights, save_atomic, weights_of, write_json_atomic
from utils.clipper import Clipper
from utils.earlystopper import EarlyStopper
from utils.errors import UserError, run_cli
from utils.logger import close_logger, setup_logger
from utils.meter import MetricSums
from utils.optimizer import OPTIMIZERS, build_optimizer
from utils.options import (Parser, add_flag, explicit_options, fraction, non_negative_float, non_negative_int,
                           positive_float, positive_int, ratio)
from utils.scheduler import SCHEDULERS, EpochLR
from utils.seed import get_rng_state, seed_everything, set_rng_state
from utils.timestamp import make_run_dir

CHECKPOINT_FORMAT = "torch-template/1"

# Options a resumed run may change: they do not change what is computed.
RESUME_SAFE_OPTIONS = {
    "resume", "n_epoch", "num_workers", "data_dir", "output_dir", "description", "debug", "download",
    "save_every_n_steps", "log_every_n_steps", "gpu_devices", "pin_memory", "compile", "model_path", "pretrained",
    "partial_load", "cache", "cache_dir", "compile_backend",
}


class TrainingStopped(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM, once the state is saved."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


def _json_value(value):
    return json.loads(json.dumps(value, default=str))


class TrainerBase:
    """Base of every task's trainer; see the module docstring for the hooks."""

    model_types = ()  # names from model/model_entry.MODELS that this task offers
    data_types = ()  # names from data/data_entry.DATASETS that this task offers
    metric_names = ("loss",)  # what compute_metrics returns, plus "loss"; --monitor must name one
    eval_stats_every = 16  # evaluated batches whose batch_stats are computed together (1: keep memory flat)

    # ------------------------------------------------------------------ options
    @classmethod
    def build_parser(cls):
        parser = Parser(description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
        cls.add_base_arguments(parser)
        cls.add_task_arguments(parser)
        return parser

    @classmethod
    def add_task_arguments(cls, parser):
        """Add the task's options and change the base's defaults with `parser.set_defaults`."""

    @classmethod
    def add_base_arguments(cls, parser):
        from data.data_entry import DATASETS
        from model.model_entry import MODELS

        run = parser.add_argument_group("run")
        run.add_argument("--proj_name", default="Default", help="project name; runs go to <output_dir>")
        run.add_argument("--description", default="", help="free text kept in config.json")
        run.add_argument("--seed", type=non_negative_int, default=0, help="random seed (0 is a valid seed)")
        add_flag(run, "--deterministic", help="deterministic kernels (slower); with a fixed seed, a run repeats exactly")
        run.add_argument("--output_dir", type=Path, default=None, help="where run folders go (default Results/<proj_name>)")
        run.add_argument("--log_every_n_steps", type=positive_int, default=50,
                         help="log the training loss to the console and TensorBoard every N optimizer steps")
        add_flag(run, "--debug", help="show full tracebacks for user errors")

        data = parser.add_argument_group("data")
        data.add_argument("--data_type", choices=[n for n in DATASETS if n in cls.data_types] or sorted(DATASETS),
                          default=cls.data_types[0] if cls.data_types else None, help="dataset")
        data.add_argument("--data_dir", type=Path, default=Path("Dataset"), help="dataset folder")
        data.add_argument("--train_val_sample_rate", type=fraction, default=1.0,
                          help="seeded fraction of the train+val pool to use, for quick runs")
        data.add_argument("--test_sample_rate", type=fraction, default=1.0,
                          help="seeded fraction of the test set to use, for quick runs")
        data.add_argument("--val_ratio", type=ratio, default=0.1, help="fraction of the pool held out for validation")
        data.add_argument("--batch_size", type=positive_int, default=64, help="samples per batch (per process)")
        data.add_argument("--eval_batch_size", type=positive_int, default=None,
                          help="batch size for validation and test (default: --batch_size)")
        data.add_argument("--num_workers", type=non_negative_int, default=0,
                          help="DataLoader workers for datasets read from files (in-memory data needs none)")
        add_flag(data, "--pin_memory", default=True, help="pinned host memory for faster copies to the GPU")

        model = parser.add_argument_group("model")
        model.add_argument("--model_type", choices=[n for n in MODELS if n in cls.model_types] or sorted(MODELS),
                           default=cls.model_types[0] if cls.model_types else None, help="network")
        model.add_argument("--model_path", type=Path, default=None, help="checkpoint with initial weights (with --pretrained)")
        add_flag(model, "--pretrained", help="start from the weights in --model_path")
        add_flag(model, "--partial_load", help="load only the weights that fit, logging what was skipped")

        optim = parser.add_argument_group("optimization")
        optim.add_argument("--n_epoch", type=positive_int, default=10, help="number of epochs")
        optim.add_argument("--optim", choices=OPTIMIZERS, default="adam", help="optimizer")
        optim.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
        optim.add_argument("--weight_decay", type=non_negative_float, default=0.0, help="weight decay")
        optim.add_argument("--momentum", type=non_negative_float, default=0.9, help="momentum (sgd)")
        optim.add_argument("--lr_scheduler", choices=SCHEDULERS, default="none",
                           help="per-epoch schedule; plateau steps on the --monitor metric")
        optim.add_argument("--warmup_epoch", type=non_negative_int, default=0, help="epochs of linear lr warm-up")
        optim.add_argument("--lr_decay_epochs", type=positive_int, nargs="+", default=[30],
                           help="step: decay every N epochs (first value); multistep: the milestones")
        optim.add_argument("--lr_decay_rate", type=positive_float, default=0.1, help="lr multiplier at each decay")
        optim.add_argument("--plateau_patience", type=non_negative_int, default=5,
                           help="plateau: epochs without improvement before the lr decays")
        optim.add_argument("--clip", type=non_negative_float, default=0.0, help="gradient clipping threshold (0 = off)")
        optim.add_argument("--clip_mode", choices=("norm", "value"), default="norm",
                           help="clip the global gradient norm, or each gradient value")
        optim.add_argument("--accum_steps", type=positive_int, default=1,
                           help="micro-batches per optimizer step; the loss is scaled so K batches of B equal one of K*B")
        add_flag(optim, "--skip_nonfinite", help="skip batches whose loss is NaN/inf (counted) instead of stopping")

        select = parser.add_argument_group("checkpoints and early stopping")
        select.add_argument("--monitor", default="val/loss",
                            help="metric for the best checkpoint AND early stopping, as <phase>/<metric>")
        select.add_argument("--monitor_mode", choices=("min", "max"), default="min", help="whether lower or higher is better")
        select.add_argument("--early_stop_patience", type=non_negative_int, default=0,
                            help="stop after N epochs without improvement (0 = off)")
        select.add_argument("--early_stop_delta", type=non_negative_float, default=0.0,
                            help="smallest change that counts as an improvement")
        select.add_argument("--save_every_n_steps", type=non_negative_int, default=0,
                            help="also save the full state every N optimizer steps, for mid-epoch resume (0 = off)")
        select.add_argument("--resume", type=Path, default=None,
                            help="checkpoint or run folder to continue, in the same folder")

        scale = parser.add_argument_group("devices and speed")
        scale.add_argument("--gpu_devices", nargs="+", default=None,
                           help="GPU ids to use, or 'cpu' (default: first GPU if there is one, else CPU)")
        add_flag(scale, "--parallel", help="DataParallel over --gpu_devices (legacy; prefer torchrun for DDP)")
        add_flag(scale, "--sync_bn", help="synchronise BatchNorm statistics across DDP processes")
        add_flag(scale, "--amp", help="automatic mixed precision")
        scale.add_argument("--amp_dtype", choices=("bf16", "fp16"), default="bf16",
                           help="autocast dtype; fp16 adds a checkpointed GradScaler")
        add_flag(scale, "--compile", help="torch.compile the model")
        scale.add_argument("--compile_backend", default="inductor",
                           help="torch.compile backend (inductor needs a C++ compiler on the CPU; eager for debugging)")
        add_flag(scale, "--channels_last", help="channels_last memory layout (conv nets)")

    @classmethod
    def parse(cls, argv):
        """Parse `argv` into options; with --resume, options not given are the checkpoint's."""
        parser = cls.build_parser()
        args = parser.parse_args(argv)
        resume_checkpoint = None
        if args.resume is not None:
            path = cls.find_checkpoint(args.resume)
            resume_checkpoint = cls.check_checkpoint(load_checkpoint(path), path)
            args = cls.merge_options(parser, argv, args, resume_checkpoint["config"], strict=True)
            args.resume = path
        return args, resume_checkpoint

    @classmethod
    def check_checkpoint(cls, checkpoint, path):
        task = checkpoint.get("task")
        if checkpoint.get("format") != CHECKPOINT_FORMAT or "config" not in checkpoint:
            raise UserError(f"{path} is not a training checkpoint of this toolkit (no '{CHECKPOINT_FORMAT}' state)")
        if task != cls.__name__:
            raise UserError(f"{path} was written by {task} (model {checkpoint['config'].get('model_type')}), "
                            f"not by {cls.__name__}")
        return checkpoint

    @staticmethod
    def find_checkpoint(path):
        """A checkpoint file, or the newest checkpoint in a run folder."""
        path = Path(path)
        if path.is_dir():
            # The last checkpoint is always the newest state; the best one may be older.
            found = sorted(path.glob("*_last_ckpt.pth"), key=lambda p: p.stat().st_mtime) or \
                sorted(path.glob("*_ckpt.pth"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise UserError(f"run folder {path} holds no *_ckpt.pth checkpoint to resume")
            return found[-1]
        if not path.exists():
            raise UserError(f"{path} does not exist (expected a checkpoint file or a run folder)")
        return path

    @classmethod
    def merge_options(cls, parser, argv, args, saved, strict):
        """Saved options, overridden by those given explicitly in `argv`.

        With `strict`, an explicit option that would change the experiment is refused.
        """
        given = explicit_options(parser, argv)
        path_options = {action.dest for action in parser._actions if action.type is Path}
        merged = vars(args).copy()
        current = {name: _json_value(value) for name, value in merged.items()}
        differences = []
        for name, saved_value in saved.items():
            if name not in merged:
                continue
            if name in given:
                if strict and name not in RESUME_SAFE_OPTIONS and current[name] != saved_value:
                    differences.append(f"--{name} {current[name]} (checkpoint: {saved_value})")
                continue
            merged[name] = Path(saved_value) if name in path_options and saved_value is not None else saved_value
        if differences:
            raise UserError("--resume: options differ from the checkpoint's and would change the experiment: "
                            + "; ".join(differences) + "; leave them out or start a new run")
        return type(args)(**merged)

    @classmethod
    def main(cls, argv=None):
        """Command-line entry point of a task script."""
        def run(argv):
            args, resume_checkpoint = cls.parse(argv)
            cls(args, resume_checkpoint).fit()
            return 0
        return run_cli(run, argv)

    # ------------------------------------------------------------------ hooks
    def __init__(self, args, resume_checkpoint=None):
        self.args = args
        self.resume_checkpoint = resume_checkpoint
        self.writer = None
        self.run_dir = None
        self.log = setup_logger()

    def build_datasets(self):
        from data.data_entry import build_datasets
        return build_datasets(self.args, log=self.log.info)

    def build_model(self):
        from model.model_entry import build_model
        return build_model(self.args)

    def build_loss(self):
        raise NotImplementedError

    def prepare_batch(self, batch, train, generator):
        return batch

    def forward_batch(self, model, batch):
        raise NotImplementedError

    def batch_stats(self, batch, outputs):
        return {}

    def compute_metrics(self, totals):
        return {}

    def report(self, phase, totals, epoch):
        """Extra logging of an evaluated phase (called on every rank; write only on rank 0)."""

    def visualize(self, writer, epoch, batch, outputs):
        """Write a few validation examples to TensorBoard."""

    # ------------------------------------------------------------------ setup
    def setup_runtime(self):
        """Process group, device and seed."""
        args = self.args
        wants_cuda = not (args.gpu_devices and [str(d).lower() for d in args.gpu_devices] == ["cpu"])
        self.rank, self.world_size, local_rank = distributed.init_distributed(wants_cuda and torch.cuda.is_available())
        self.main_process = self.rank == 0
        self.log = setup_logger(main_process=self.main_process)
        self.device = distributed.resolve_device(args.gpu_devices, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if args.parallel and (self.device.type != "cuda" or self.world_size > 1):
            raise UserError("--parallel (DataParallel) needs GPUs and a single process; "
                            "under torchrun, DDP is used without it")
        if args.sync_bn and self.world_size > 1 and self.device.type != "cuda":
            raise UserError("--sync_bn needs GPUs (SyncBatchNorm does not run on the CPU); leave it out on the CPU")
        if args.sync_bn and self.world_size == 1:
            self.log.warning("--sync_bn has no effect in a single process; it applies under torchrun")
        seed_everything(args.seed, args.deterministic)

    def setup_data(self, split=None):
        """Datasets and the train / val / test split (computed, or the saved `split`)."""
        args = self.args
        pool, test_pool = self.build_datasets()
        groups = getattr(pool, "groups", None)
        if split is None:
            split = self.make_split(pool, test_pool, groups)
        self.split = split
        self.datasets = {}
        for phase in ("train", "val", "test"):
            source = test_pool if phase == "test" and test_pool is not None else pool
            indices = self.split_indices(source, split, phase)
            self.datasets[phase] = Subset(source, indices)
        eval_batch_size = args.eval_batch_size or args.batch_size
        self.loaders = {}
        for phase, dataset in self.datasets.items():
            train = phase == "train"
            sampler = EpochBatchSampler(len(dataset), args.batch_size if train else eval_batch_size, shuffle=train,
                                        seed=args.seed, rank=self.rank, world_size=self.world_size, pad=train)
            self.loaders[phase] = BatchLoader(dataset, sampler, num_workers=args.num_workers,
                                              pin_memory=args.pin_memory and self.device.type == "cuda")
        sizes = ", ".join(f"{phase} {len(dataset)}" for phase, dataset in self.datasets.items())
        self.log.info(f"data: {args.data_type} from {args.data_dir}: {sizes}")

    def make_split(self, pool, test_pool, groups):
        args = self.args
        indices = sample_fraction(torch.arange(len(pool)), args.train_val_sample_rate, args.seed, groups)
        ratios = {"val": args.val_ratio}
        if test_pool is None:
            ratios["test"] = getattr(args, "test_ratio", 0.1)
        parts = split_by_group(indices, ratios, args.seed, groups)
        if test_pool is not None:
            test_groups = getattr(test_pool, "groups", None)
            parts["test"] = sample_fraction(torch.arange(len(test_pool)), args.test_sample_rate, args.seed + 1, test_groups)
        else:
            parts["test"] = sample_fraction(parts["test"], args.test_sample_rate, args.seed + 1, groups)
        split = {"seed": args.seed, "test_from": "pool" if test_pool is None else "test_set"}
        for phase in ("train", "val", "test"):
            source = test_pool if phase == "test" and test_pool is not None else pool
            split[phase] = parts[phase].tolist()
            names = getattr(source, "names", None)
            if names is not None:
                split[f"{phase}_names"] = [names[i] for i in split[phase]]
        return split

    @staticmethod
    def split_indices(source, split, phase):
        """Indices of a saved split in `source`, matched by sample name when the dataset has names."""
        names = getattr(source, "names", None)
        if names is not None and f"{phase}_names" in split:
            position = {name: i for i, name in enumerate(names)}
            missing = [name for name in split[f"{phase}_names"] if name not in position]
            if missing:
                raise UserError(f"{len(missing)} {phase} samples of the saved split are not in the dataset "
                                f"(first: {missing[0]}); is --data_dir the folder the run used?")
            return [position[name] for name in split[f"{phase}_names"]]
        indices = split[phase]
        if indices and max(indices) >= len(source):
            raise UserError(f"the saved {phase} split indexes sample {max(indices)} but the dataset has {len(source)}; "
                            "is --data_dir the folder the run used?")
        return indices

    def setup_model(self):
        args = self.args
        self.raw_model = self.build_model()
        if args.pretrained or args.model_path is not None:
            if not (args.pretrained and args.model_path is not None):
                raise UserError("initial weights need both --model_path PATH and --pretrained "
                                "(to continue a run, use --resume)")
            load_weights(self.raw_model, weights_of(load_checkpoint(args.model_path)), args.model_path,
                         partial=args.partial_load, log=self.log.warning)
            self.log.info(f"initial weights from {args.model_path}")
        self.raw_model.to(self.device)
        if args.channels_last:
            self.raw_model.to(memory_format=torch.channels_last)
        self.loss_fn = self.build_loss()
        self.eval_model = self.raw_model
        self.model = self.raw_model
        self.ddp_model = None
        if self.world_size > 1:
            if args.sync_bn:
                self.raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model)
                self.eval_model = self.model = self.raw_model
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.raw_model, device_ids=device_ids)
            self.model = self.ddp_model
        elif args.parallel:
            ids = [int(d) for d in args.gpu_devices] if args.gpu_devices else list(range(torch.cuda.device_count()))
            self.model = self.eval_model = torch.nn.DataParallel(self.raw_model, device_ids=ids)
        if args.compile:
            self.model = torch.compile(self.model, backend=args.compile_backend)
            self.eval_model = self.model if self.ddp_model is None else torch.compile(self.raw_model,
                                                                                       backend=args.compile_backend)

    def setup_optimization(self):
        args = self.args
        self.optimizer = build_optimizer(self.raw_model.parameters(), args.optim, args.lr, args.weight_decay, args.momentum)
        self.scheduler = EpochLR(self.optimizer, args.lr_scheduler, args.n_epoch, args.warmup_epoch,
                                 args.lr_decay_epochs, args.lr_decay_rate, args.monitor_mode, args.plateau_patience)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.amp and args.amp_dtype == "fp16")
        self.clipper = Clipper(args.clip_mode, args.clip)
        self.stopper = EarlyStopper(args.monitor_mode, args.early_stop_patience, args.early_stop_delta)
        self.epoch = 0  # completed epochs
        self.batches_done = 0  # micro-batches of the epoch in progress already trained on
        self.global_step = 0  # optimizer steps
        self.skipped_steps = 0  # fp16 steps the scaler skipped for inf/NaN gradients
        self.nonfinite_batches = 0
        self.history = []
        self.epoch_sums = MetricSums()
        self.group_stats = []  # statistics of the micro-batches of the optimizer step in progress
        self.in_update = False  # True while the optimizer changes the weights: no crash save then
        self.stop_signal = None  # set by SIGINT / SIGTERM, acted on at the next step boundary
        self.status = "running"

    def autocast(self):
        if not self.args.amp:
            return nullcontext()
        dtype = torch.bfloat16 if self.args.amp_dtype == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def check_monitor(self):
        phase, _, name = self.args.monitor.partition("/")
        if phase not in ("train", "val") or name not in self.metric_names:
            choices = ", ".join(f"{p}/{n}" for p in ("val", "train") for n in self.metric_names)
            raise UserError(f"--monitor {self.args.monitor} is not a metric of this task; expected one of {choices}")

    def setup_run_folder(self):
        """Create (or reopen, on resume) the run folder; only rank 0 writes to it."""
        args = self.args
        if args.output_dir is None:
            args.output_dir = Path("Results") / args.proj_name
        run_dir = None
        if self.main_process:
            if self.resume_checkpoint is not None:
                run_dir = Path(args.resume).parent
            else:
                try:
                    run_dir = make_run_dir(args.output_dir)
                except OSError as error:
                    raise UserError(f"cannot create a run folder in --output_dir {args.output_dir}: "
                                    f"{error.strerror or error}") from None
        self.run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir else None))
        self.ckpt_paths = {kind: self.run_dir / f"{args.model_type}_{kind}_ckpt.pth" for kind in ("best", "last")}
        if not self.main_process:
            return
        self.log = setup_logger(log_file=self.run_dir / "log.txt")
        for stale in self.run_dir.glob(".*.tmp"):  # a half-written file of a process that was killed
            stale.unlink()
            self.log.info(f"removed {stale.name}, left by an interrupted write")
        self.write_config()
        split_path = self.run_dir / "split.json"
        if self.resume_checkpoint is None:
            write_json_atomic(self.split, split_path)
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when a run starts
        self.writer = SummaryWriter(self.run_dir / "summary",
                                    purge_step=self.global_step if self.resume_checkpoint is not None else None)

    def write_config(self):
        config_path = self.run_dir / "config.json"
        previous = json.loads(config_path.read_text()) if config_path.exists() else {}
        environment = previous.get("environment") or {
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "platform": platform.platform(), "hostname": socket.gethostname(), "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor(),
            "world_size": self.world_size, **git_state(), "command": " ".join(sys.argv),
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        config = {"options": _json_value(vars(self.args)), "environment": environment,
                  "resumes": previous.get("resumes", [])}
        if self.resume_checkpoint is not None:
            config["resumes"].append({"from": str(self.args.resume), "epoch": self.epoch, "global_step": self.global_step,
                                      "at": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
                                      "device": str(self.device), **git_state()})
        write_json_atomic(config, config_path)

    def restore(self, checkpoint):
        """Load the full training state of a checkpoint (the RNG last, just before training)."""
        load_weights(self.raw_model, checkpoint["model"], self.args.resume)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.stopper.load_state_dict(checkpoint["early_stopper"])
        self.epoch = checkpoint["epoch"]
        self.batches_done = checkpoint["batches_done"]
        self.global_step = checkpoint["global_step"]
        self.skipped_steps = checkpoint["skipped_steps"]
        self.nonfinite_batches = checkpoint["nonfinite_batches"]
        self.history = list(checkpoint["history"])
        self.epoch_sums.load_state_dict(checkpoint["epoch_sums"], self.device)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        return {
            "format": CHECKPOINT_FORMAT, "task": type(self).__name__, "model_type": self.args.model_type,
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "early_stopper": self.stopper.state_dict(), "epoch": self.epoch, "batches_done": self.batches_done,
            "epoch_sums": self.epoch_sums.state_dict(),
            "global_step": self.global_step, "skipped_steps": self.skipped_steps,
            "nonfinite_batches": self.nonfinite_batches, "best_metric": self.stopper.best,
            "best_epoch": self.stopper.best_epoch, "history": self.history, "rng": get_rng_state(),
            "world_size": self.world_size, "config": _json_value(vars(self.args)),
        }

    def save_checkpoint(self, kinds=("last",)):
        if not self.main_process:
            return
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)  # serialised once, written to each file
        for kind in kinds:
            save_atomic(buffer.getvalue(), self.ckpt_paths[kind])

    def write_metrics(self, test_metrics=None):
        if not self.main_process:
            return
        summary = {"monitor": self.args.monitor, "monitor_mode": self.args.monitor_mode,
                   "best_epoch": self.stopper.best_epoch, "best_value": self.stopper.best, "status": self.status,
                   "epochs_done": self.epoch, "global_step": self.global_step, "skipped_steps": self.skipped_steps,
                   "nonfinite_batches": self.nonfinite_batches, "history": self.history}
        if test_metrics is not None:
            summary["test"] = test_metrics
            summary["test_checkpoint"] = str(self.tested_checkpoint)
        write_json_atomic(summary, self.run_dir / "metrics.json")

    # ------------------------------------------------------------------ the loop
    def to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            channels_last = self.args.channels_last and batch.dim() == 4
            return batch.to(self.device, non_blocking=True,
                            memory_format=torch.channels_last if channels_last else torch.preserve_format)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(item) for item in batch)
        if isinstance(batch, dict):
            return {key: self.to_device(value) for key, value in batch.items()}
        return batch

    @staticmethod
    def batch_size_of(batch):
        while isinstance(batch, (list, tuple, dict)):
            batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
        return batch.shape[0]

    def run_epoch(self, phase, epoch=0, on_batch=None):
        """One pass over a phase's loader: train (with optimizer steps) or evaluate. Returns
        (metrics named `<phase>/<metric>`, summed stats)."""
        train = phase == "train"
        loader = self.loaders[phase]
        model = self.model if train else self.eval_model
        model.train(train)
        skip = self.batches_done if train else 0
        loader.sampler.set_epoch(epoch, skip)
        n_batches = len(loader.sampler)
        sums = self.epoch_sums if train else MetricSums()
        progress = self.progress(loader, phase, epoch, skip, n_batches)
        interval_loss = torch.zeros((), device=self.device)
        interval_batches = 0
        pending = []  # evaluated (batch, outputs) whose statistics are not computed yet
        with torch.set_grad_enabled(train):
            for index, batch in enumerate(progress, start=skip):
                batch = self.to_device(batch)
                if train:
                    generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + epoch * 100_003 + index)
                    batch = self.prepare_batch(batch, True, generator)
                    loss, outputs = self.train_batch(batch, index, n_batches)
                    if loss is not None:
                        interval_loss += loss.detach()
                        interval_batches += 1
                    if self.batches_done == index + 1:  # an optimizer step just completed
                        if self.global_step % self.args.log_every_n_steps == 0:
                            self.log_step(epoch, index + 1, n_batches, interval_loss, interval_batches, progress)
                            interval_loss = torch.zeros((), device=self.device)
                            interval_batches = 0
                        self.after_step(epoch)
                else:
                    batch = self.prepare_batch(batch, False, None)
                    with self.autocast():
                        loss, outputs = self.forward_batch(model, batch)
                    size = self.batch_size_of(batch)
                    sums.add({"loss_sum": loss.detach() * size, "loss_samples": size})
                    pending.append((batch, outputs))
                    if len(pending) == self.eval_stats_every:
                        self.add_pending_stats(sums, pending)
                    if phase == "val" and index == 0 and self.writer is not None:
                        self.visualize(self.writer, epoch + 1, batch, outputs)
                    if on_batch is not None:
                        on_batch(batch, outputs, index)
        self.add_pending_stats(sums, pending)
        if hasattr(progress, "close"):
            progress.close()
        totals = sums.reduced()
        metrics = {f"{phase}/{name}": float(value) for name, value in self.metrics_with_loss(totals).items()}
        return metrics, totals

    def add_pending_stats(self, sums, pending):
        """Statistics of several evaluated batches at once: the same sums from a few large operations
        instead of many small ones, which dominate the evaluation of a small model."""
        if pending:
            batches, outputs = zip(*pending)
            sums.add(self.batch_stats(concatenate(batches), concatenate(outputs)) if len(pending) > 1
                     else self.batch_stats(batches[0], outputs[0]))
            pending.clear()

    def stats_with_loss(self, batch, outputs, loss):
        size = self.batch_size_of(batch)
        stats = self.batch_stats(batch, outputs)
        stats["loss_sum"] = loss.detach() * size
        stats["loss_samples"] = size
        return stats

    def metrics_with_loss(self, totals):
        if not totals:
            return {}
        metrics = {"loss": totals["loss_sum"] / totals["loss_samples"]}
        metrics.update(self.compute_metrics(totals))
        return metrics

    def train_batch(self, batch, index, n_batches):
        """Forward and backward of one micro-batch; an optimizer step at the end of each group of
        --accum_steps micro-batches. Returns (loss, outputs), or (None, None) for a skipped batch."""
        accum = self.args.accum_steps
        group_start = index - index % accum
        group_size = min(accum, n_batches - group_start)
        last_in_group = index == group_start + group_size - 1
        no_sync = self.ddp_model is not None and not last_in_group
        with self.ddp_model.no_sync() if no_sync else nullcontext():
            with self.autocast():
                loss, outputs = self.forward_batch(self.model, batch)
            nonfinite = not bool(torch.isfinite(loss.detach()))
            if self.world_size > 1:
                nonfinite = distributed.any_rank(nonfinite, self.device)
            if nonfinite:
                self.handle_nonfinite(index, loss)
                # A zero gradient still runs the backward, so DDP's gradient sync happens on every rank.
                loss = sum(parameter.sum() for parameter in self.raw_model.parameters()) * 0.0
                self.scaler.scale(loss).backward()
            else:
                # Weighted by its share of the group's samples, so that K micro-batches give the gradient
                # of one batch of all their samples (mean-reduced loss), also when the last one is short.
                sampler = self.loaders["train"].sampler
                sizes = [sampler.batch_size_at(i) for i in range(group_start, group_start + group_size)]
                self.scaler.scale(loss * (sizes[index - group_start] / sum(sizes))).backward()
                self.group_stats.append(self.stats_with_loss(batch, outputs, loss))
        if last_in_group:
            self.optimizer_step(index)
        return (None, None) if nonfinite else (loss, outputs)

    def handle_nonfinite(self, index, loss):
        where = f"epoch {self.epoch + 1}, batch {index + 1} (global step {self.global_step})"
        if not self.args.skip_nonfinite:
            raise NonFiniteLoss(f"loss is {loss.item()} at {where}; the last good checkpoint is kept. "
                                "Lower --lr, add --clip, or pass --skip_nonfinite to skip such batches")
        self.nonfinite_batches += 1
        self.log.warning(f"skipped a batch with loss {loss.item()} at {where} ({self.nonfinite_batches} so far)")

    def optimizer_step(self, index):
        self.in_update = True
        if self.clipper.enabled:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            self.clipper(self.raw_model.parameters())
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                self.skipped_steps += 1
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for stats in self.group_stats:
            self.epoch_sums.add(stats)
        self.group_stats = []
        self.global_step += 1
        self.batches_done = index + 1
        self.in_update = False

    def after_step(self, epoch):
        """At a step boundary: the periodic checkpoint, and a requested stop."""
        every = self.args.save_every_n_steps
        stop = self.stop_signal is not None
        if self.world_size > 1:
            stop = distributed.any_rank(stop, self.device)
        if stop or (every and self.global_step % every == 0):
            self.save_checkpoint()
        if stop:
            distributed.barrier()  # no rank exits (and gets the others killed) before rank 0 has saved
            raise TrainingStopped(self.stop_signal or signal.SIGTERM)

    def log_step(self, epoch, batch_number, n_batches, interval_loss, interval_batches, progress):
        loss = (interval_loss / max(1, interval_batches)).item()
        lr = self.optimizer.param_groups[0]["lr"]
        if self.writer is not None:
            self.writer.add_scalar("train/step_loss", loss, self.global_step)
            self.writer.add_scalar("train/step_lr", lr, self.global_step)
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
        else:
            elapsed = time.perf_counter() - self.epoch_start
            self.log.info(f"epoch {epoch + 1} step {batch_number}/{n_batches} loss {loss:.4f} lr {lr:.3g} "
                          f"({elapsed:.1f}s)")

    def progress(self, loader, phase, epoch, skip, n_batches):
        if self.main_process and sys.stderr.isatty():
            from tqdm import tqdm
            return tqdm(loader, desc=f"{phase} {epoch + 1}/{self.args.n_epoch}" if phase != "test" else "test",
                        initial=skip, total=n_batches, leave=False, dynamic_ncols=True)
        return loader

    # ------------------------------------------------------------------ workflow
    def setup(self):
        self.setup_runtime()
        self.check_monitor()
        split = None
        if self.resume_checkpoint is not None:
            split_path = Path(self.args.resume).parent / "split.json"
            if not split_path.exists():
                raise UserError(f"{split_path} is missing; the run's split cannot be restored")
            split = json.loads(split_path.read_text())
        self.setup_data(split)
        self.setup_model()
        self.setup_optimization()
        if self.resume_checkpoint is not None:
            self.restore(self.resume_checkpoint)
        self.setup_run_folder()
        if self.resume_checkpoint is not None:
            set_rng_state(self.resume_checkpoint["rng"])
            self.log.info(f"resumed from {self.args.resume} at epoch {self.epoch + 1}, "
                          f"batch {self.batches_done}, global step {self.global_step}")
        self.log.info(f"run folder {self.run_dir} on {self.device}"
                      + (f" x{self.world_size} processes" if self.world_size > 1 else ""))

    def fit(self):
        """Train, validate, test the best checkpoint, write the summary. Returns the test metrics."""
        previous_handlers = {}
        try:
            self.setup()
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous_handlers[signum] = signal.signal(signum, self.on_signal)
            self.train_epochs()
            test_metrics = self.test_best()
            self.status = "early_stopped" if self.stopper.should_stop else "completed"
            self.write_metrics(test_metrics)
            self.write_hparams(test_metrics)
            self.log.info(f"done: {self.run_dir}")
            return test_metrics
        except TrainingStopped as stop:
            self.status = "interrupted"
            self.write_metrics()
            command = ("torchrun --nproc_per_node {} ".format(self.world_size) if self.world_size > 1 else "python ")
            self.log.warning(f"stopped by {stop} at epoch {self.epoch + 1}, step {self.global_step}; state saved to "
                             f"{self.ckpt_paths['last']}. Resume with: {command}{sys.argv[0]} "
                             f"--resume {self.ckpt_paths['last']}")
            raise SystemExit(128 + stop.signum)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception:
            self.save_after_crash()
            raise
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            if self.writer is not None:
                self.writer.close()
            close_logger(self.log)
            distributed.cleanup()

    def save_after_crash(self):
        if self.run_dir is None or not hasattr(self, "optimizer") or self.in_update:
            return
        frame = traceback.extract_tb(sys.exc_info()[2])[-1]
        self.log.error(f"crashed at epoch {self.epoch + 1}, step {self.global_step} in {frame.filename}:{frame.lineno}; "
                       f"saving the state of the last completed step to {self.ckpt_paths['last']}")
        try:
            self.save_checkpoint()
        except Exception as error:
            self.log.error(f"could not save the state: {error}")

    def on_signal(self, signum, frame):
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum
        self.log.warning(f"{signal.Signals(signum).name} received: finishing the current step, then saving "
                         "(Ctrl+C again to stop at once)")

    def train_epochs(self):
        args = self.args
        while self.epoch < args.n_epoch and not (self.history and self.stopper.should_stop):
            epoch = self.epoch
            self.epoch_start = time.perf_counter()
            train_metrics, train_totals = self.run_epoch("train", epoch)
            train_end = time.perf_counter()
            val_metrics, val_totals = self.run_epoch("val", epoch)
            end = time.perf_counter()
            record = {"epoch": epoch + 1, "global_step": self.global_step, "lr": self.optimizer.param_groups[0]["lr"],
                      **train_metrics, **val_metrics, "train_time_s": round(train_end - self.epoch_start, 4),
                      "val_time_s": round(end - train_end, 4), "time_s": round(end - self.epoch_start, 4)}
            value = record[args.monitor]
            improved = self.stopper.step(value, epoch + 1)
            self.scheduler.step(value)
            self.history.append(record)
            self.epoch, self.batches_done = epoch + 1, 0
            self.epoch_sums = MetricSums()
            self.save_checkpoint(("last", "best") if improved else ("last",))
            self.write_metrics()
            self.report("train", train_totals, epoch + 1)
            self.report("val", val_totals, epoch + 1)
            if self.writer is not None:
                for name, number in record.items():
                    if "/" in name:
                        self.writer.add_scalar(name, number, epoch + 1)
                self.writer.add_scalar("lr", record["lr"], epoch + 1)
                self.writer.flush()
            shown = "  ".join(f"{name} {number:.4f}" for name, number in record.items() if "/" in name)
            self.log.info(f"epoch {epoch + 1}/{args.n_epoch}  {shown}  lr {record['lr']:.3g}  "
                          f"{record['time_s']:.1f}s" + ("  *best*" if improved else ""))
            if distributed.any_rank(self.stop_signal is not None, self.device):
                raise TrainingStopped(self.stop_signal or signal.SIGTERM)
            if self.stopper.should_stop:
                self.log.info(f"early stopping: {args.monitor} has not improved for {self.stopper.patience} epochs "
                              f"(best {self.stopper.best:.4f} at epoch {self.stopper.best_epoch})")

    def test_best(self):
        """Evaluate the best checkpoint (the last one if no epoch ever improved) on the test set."""
        distributed.barrier()
        path = self.ckpt_paths["best"] if self.ckpt_paths["best"].exists() else self.ckpt_paths["last"]
        if path != self.ckpt_paths["best"]:
            self.log.warning(f"no best checkpoint ({self.args.monitor} never improved); testing {path.name}")
        self.tested_checkpoint = path
        load_weights(self.raw_model, load_checkpoint(path)["model"], path)
        test_metrics, test_totals = self.run_epoch("test")
        self.report("test", test_totals, self.stopper.best_epoch)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in test_metrics.items())
        self.log.info(f"test ({path.name}, epoch {self.stopper.best_epoch}): {shown}")
        return test_metrics

    def write_hparams(self, test_metrics):
        if self.writer is None:
            return
        for name, value in test_metrics.items():
            self.writer.add_scalar(name, value, self.stopper.best_epoch or self.epoch)
        hparams = {name: (value if isinstance(value, (int, float, str, bool)) else str(value))
                   for name, value in vars(self.args).items()}
        final = {f"hparam/{name}": value for name, value in test_metrics.items()}
        if self.stopper.best is not None:
            final[f"hparam/best_{self.args.monitor}"] = self.stopper.best
        self.writer.add_hparams(hparams, final, run_name="hparams")


def concatenate(batches):
    """One batch from several of the same structure (tensors, or tuples / lists / dicts of them)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, (list, tuple)):
        return type(first)(concatenate(parts) for parts in zip(*batches))
    if isinstance(first, dict):
        return {key: concatenate([batch[key] for batch in batches]) for key in first}
    return first


def git_state():
    """The commit of the code that runs, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}
    if commit.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


if __name__ == "__main__":
    sys.exit("trainer.py holds TrainerBase; run a task script such as trainer_vanilla.py")
