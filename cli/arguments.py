"""The options every task shares, and how a resumed or evaluated run merges them with its saved ones."""
import argparse
import json
from pathlib import Path

from utils.errors import UserError
from training.optimizers import OPTIMIZERS
from cli.options import (add_flag, explicit_options, fraction, non_negative_float, non_negative_int, positive_float,
                           positive_int, ratio)
from training.schedules import SCHEDULERS, SCHEDULES_OVER_N_EPOCH
from tracking.trackers import LOGGERS, logger_names, mlflow_uri

# Options of the base that a resumed run may change: they do not change what is computed. A task
# adds its own in `TrainerBase.task_resume_safe_options`.
RESUME_SAFE_OPTIONS = frozenset({
    "resume", "n_epoch", "num_workers", "data_dir", "output_dir", "description", "debug", "save_every_n_steps",
    "log_every_n_steps", "gpu_devices", "pin_memory", "compile", "compile_backend", "model_path", "pretrained",
    "partial_load", "config", "print_config", "log_graph", "lr_find", "lr_find_apply", "lr_find_min", "lr_find_max",
    "lr_find_steps",
})

# Options of the base that only training uses, and those that define the split: the evaluator takes
# both from the checkpoint and refuses them on its command line. A task adds its own in
# `TrainerBase.task_training_options` / `task_split_options`.
TRAINING_OPTIONS = (
    "config", "print_config", "proj_name", "description", "output_dir", "log_every_n_steps", "log_graph", "logger",
    "mlflow_uri",
    "fast_dev_run", "overfit_batches", "model_type", "pretrained", "partial_load", "n_epoch", "optim", "lr",
    "weight_decay", "momentum", "lr_scheduler", "lr_interval", "min_lr", "warmup_epoch", "warmup_steps",
    "lr_decay_epochs", "lr_decay_rate",
    "plateau_patience", "clip", "clip_mode", "accum_steps", "skip_nonfinite", "ema_decay", "ema_warmup", "monitor",
    "monitor_mode",
    "early_stop_patience", "early_stop_delta", "save_every_n_steps", "save_top_k", "resume", "sync_bn", "lr_find",
    "lr_find_apply", "lr_find_min", "lr_find_max", "lr_find_steps",
)
SPLIT_OPTIONS = ("seed", "data_type", "val_ratio", "train_val_sample_rate", "test_sample_rate")


def add_base_arguments(parser, model_types, data_types):
    """The base's argparse groups; `model_types` / `data_types` are the names the task offers."""
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="options from a .json/.yaml file (a run's config.json repeats that run); "
                          "flags given on the command line override it")
    run.add_argument("--print_config", nargs="?", const="yaml", choices=("yaml", "json"), default=None,
                     help="print the resolved options as a config file (yaml unless json is given) and exit")
    run.add_argument("--proj_name", default="Default", help="project name; runs go to <output_dir>")
    run.add_argument("--description", default="", help="free text kept in config.json")
    run.add_argument("--seed", type=non_negative_int, default=0, help="random seed (0 is a valid seed)")
    add_flag(run, "--deterministic", help="deterministic kernels (slower); with a fixed seed, a run repeats exactly")
    run.add_argument("--output_dir", type=Path, default=None, help="where run folders go (default Results/<proj_name>)")
    run.add_argument("--log_every_n_steps", type=positive_int, default=50,
                     help="log the training loss to the console and TensorBoard every N optimizer steps")
    add_flag(run, "--debug", help="show full tracebacks for user errors")
    add_flag(run, "--log_graph", default=True, help="write the model's graph to TensorBoard's Graphs tab")
    run.add_argument("--logger", type=logger_names, default=["tensorboard"], metavar="NAMES",
                     help=f"where scalars go, comma-separated: {', '.join(LOGGERS)} (csv: metrics.csv in the run "
                          "folder; mlflow and wandb need their packages) (default: tensorboard)")
    run.add_argument("--mlflow_uri", type=mlflow_uri, default=None, metavar="URI",
                     help="with --logger mlflow: the tracking URI or a local folder (default: $MLFLOW_TRACKING_URI, "
                          "else ./mlruns, a file store)")

    debug = parser.add_argument_group("debug runs")
    debug.add_argument("--fast_dev_run", type=non_negative_int, nargs="?", const=2, default=0, metavar="N",
                       help="N batches (2 if N is left out) of train, val and test, one epoch, through every step "
                            "of a real run, in a folder named <timestamp>_fast_dev_run (0 = off)")
    debug.add_argument("--overfit_batches", type=non_negative_int, default=0, metavar="N",
                       help="train and validate on the same N training batches: the loss should fall towards "
                            "zero, the first check of a new model or loss (0 = off)")

    data = parser.add_argument_group("data")
    data.add_argument("--data_type", choices=data_types, default=data_types[0], help="dataset")
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
    model.add_argument("--model_type", choices=model_types, default=model_types[0], help="network")
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
                       help="lr schedule; plateau decays on the --monitor metric, per epoch")
    optim.add_argument("--lr_interval", choices=("step", "epoch"), default=None,
                       help="advance the schedule every optimizer step or every epoch "
                            "(default: step for cosine, linear and onecycle, epoch for the others)")
    optim.add_argument("--min_lr", type=non_negative_float, default=0.0,
                       help="the lr cosine, linear and onecycle end at")
    optim.add_argument("--warmup_epoch", type=non_negative_int, default=0, help="epochs of linear lr warm-up")
    optim.add_argument("--warmup_steps", type=non_negative_int, default=0,
                       help="optimizer steps of linear lr warm-up (with --lr_interval step; instead of --warmup_epoch)")
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
    optim.add_argument("--ema_decay", type=ratio, default=0.0,
                       help="average of the weights, updated every optimizer step, validated as val_ema/* "
                            "(0 = off; typical 0.999 to 0.9999)")
    add_flag(optim, "--ema_warmup", default=True,
             help="with --ema_decay: decay min(D, (1+t)/(10+t)) at update t, so early averages forget the initialisation")

    finder = parser.add_argument_group("learning-rate range test")
    add_flag(finder, "--lr_find", help="before training, the lr range test: lr_find.png and .csv in the run folder, "
                                       "the suggested lr in the log; no training unless --lr_find_apply")
    add_flag(finder, "--lr_find_apply", help="with --lr_find: train with the suggested lr (kept as --lr in config.json)")
    finder.add_argument("--lr_find_min", type=positive_float, default=1e-7, help="the test's first lr")
    finder.add_argument("--lr_find_max", type=positive_float, default=10.0, help="the test's last lr")
    finder.add_argument("--lr_find_steps", type=positive_int, default=200, help="optimizer steps of the test")

    select = parser.add_argument_group("checkpoints and early stopping")
    select.add_argument("--monitor", default="val/loss",
                        help="metric for the best checkpoint AND early stopping, as <phase>/<metric>")
    select.add_argument("--monitor_mode", choices=("min", "max"), default="min", help="whether lower or higher is better")
    select.add_argument("--early_stop_patience", type=non_negative_int, default=0,
                        help="stop after N epochs without improvement (0 = off)")
    select.add_argument("--early_stop_delta", type=non_negative_float, default=0.0,
                        help="smallest change that counts as an improvement")
    select.add_argument("--save_top_k", type=non_negative_int, default=0,
                        help="also keep the K best epochs' checkpoints by --monitor, as "
                             "<model_type>_epoch<N>_<metric><value>.pth (0 = off)")
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


def check_schedule(args):
    """Schedule options that contradict each other, refused before anything runs."""
    from training.schedules import lr_interval
    interval = lr_interval(args)
    if args.lr_scheduler == "plateau" and interval == "step":
        raise UserError("--lr_scheduler plateau --lr_interval step: plateau decays on a per-epoch metric; "
                        "use --lr_interval epoch")
    if args.warmup_steps and interval == "epoch":
        raise UserError(f"--warmup_steps {args.warmup_steps} with a per-epoch schedule: use --warmup_epoch, "
                        "or --lr_interval step")
    if args.warmup_steps and args.warmup_epoch:
        raise UserError(f"--warmup_steps {args.warmup_steps} and --warmup_epoch {args.warmup_epoch}: give one of them")
    if args.lr_find and args.lr_find_min >= args.lr_find_max:
        raise UserError(f"--lr_find_min {args.lr_find_min} is not below --lr_find_max {args.lr_find_max}")
    if args.lr_find_apply and not args.lr_find:
        raise UserError("--lr_find_apply applies the suggestion of --lr_find: give both")
    if args.min_lr >= args.lr and args.lr_scheduler in ("cosine", "linear", "onecycle"):
        raise UserError(f"--min_lr {args.min_lr} is not below --lr {args.lr}: the {args.lr_scheduler} schedule "
                        "would not decay")


def json_value(value):
    """`value` as config.json stores it (paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def merge_options(parser, argv, args, saved, safe=None):
    """Saved options, overridden by those given explicitly in `argv`.

    With `safe` (a resume), an explicit option outside `safe` that differs from the saved value
    would change the experiment, and is refused with each such option named.
    """
    given = explicit_options(parser, argv)
    path_options = {action.dest for action in parser._actions if action.type is Path}
    merged = vars(args).copy()
    differences = []
    for name, saved_value in saved.items():
        if name not in merged:
            continue
        if name in given:
            if safe is not None and name not in safe and json_value(merged[name]) != saved_value:
                why = _why_unsafe(name, saved)
                differences.append(f"--{name} {json_value(merged[name])} (checkpoint: {saved_value}{why})")
            continue
        merged[name] = Path(saved_value) if name in path_options and saved_value is not None else saved_value
    if differences:
        raise UserError("--resume: options differ from the checkpoint's and would change the experiment: "
                        + "; ".join(differences) + "; leave them out or start a new run")
    return argparse.Namespace(**merged)


def resume_safe_options(saved, task_options=()):
    """The options a run resumed from a checkpoint with the `saved` options may change."""
    safe = set(RESUME_SAFE_OPTIONS) | set(task_options)
    if saved.get("lr_scheduler") in SCHEDULES_OVER_N_EPOCH:
        safe.discard("n_epoch")  # the schedule is laid out over n_epoch: changing it changes every later lr
    return safe


def _why_unsafe(name, saved):
    if name == "n_epoch" and saved.get("lr_scheduler") in SCHEDULES_OVER_N_EPOCH:
        return f"; its {saved['lr_scheduler']} lr schedule spans n_epoch, and a resume keeps the checkpoint's schedule"
    return ""
