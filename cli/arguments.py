"""The options every task shares, and how a resumed or evaluated run merges them with its saved ones."""
import argparse
import json
import os
from pathlib import Path

from cli.global_batch import mark_following_option, resolve_global_batch
from cli.options import (PLACE, SHARED, SPLIT, TRAINING, TRAINING_RESUMABLE, Parser, add_flag, add_option,
                         explicit_options, fraction, non_negative_float, non_negative_int, options_where,
                         positive_float, positive_int, ratio, seed, undeclared_options)
from state.resume_policy import auto_resume, check_new_named_run, restarted_branch, wants_auto
from tracking.trackers import LOGGERS, check_installed, logger_names, mlflow_uri
from training.optimizers import OPTIMIZERS
from training.schedules import SCHEDULERS, SCHEDULES_OVER_N_EPOCH
from utils.errors import UserError, show_tracebacks


def task_parser(task_class, description=None):
    """The parser of a task's scripts: the base's options, offering the task's models and datasets, and the task's."""
    from data.data_entry import DATASETS
    from model.model_entry import MODELS
    parser = Parser(description=description)
    add_base_arguments(parser, list(task_class.model_types) or sorted(MODELS),
                       list(task_class.data_types) or sorted(DATASETS))
    task_class.add_arguments(parser)
    mistakes = undeclared_options(parser)
    if mistakes:
        raise TypeError(f"{task_class.__name__}: options without rules, or defaults of no option: "
                        f"{', '.join(mistakes)}")
    return parser


def add_base_arguments(parser, model_types, data_types):
    """The base's argparse groups; `model_types` / `data_types` are the names the task offers."""
    run = parser.add_argument_group("run")
    add_option(run, "--config", rules=PLACE.but(sweep=False, in_files=False), type=Path, default=None, metavar="FILE",
               help="options from a .json/.yaml file (a run's config.json repeats that run); flags given on the "
                    "command line override it. The evaluator takes the evaluation's options from it")
    add_option(run, "--print_config", rules=TRAINING_RESUMABLE.but(sweep=False, in_files=False), nargs="?",
               const="yaml", choices=("yaml", "json"), default=None,
               help="print the resolved options as a config file (yaml unless json is given) and exit")
    add_option(run, "--proj_name", rules=TRAINING.but(sweep=False), default="Default",
               help="project name; runs go to <output_dir>")
    add_option(run, "--description", rules=TRAINING_RESUMABLE, default="", help="free text kept in config.json")
    add_option(run, "--seed", rules=SPLIT, type=seed, default=0, help="random seed (0 is a valid seed)")
    add_flag(run, "--deterministic", SHARED,
             help="deterministic kernels (slower); with a fixed seed, a run repeats exactly")
    add_option(run, "--output_dir", rules=TRAINING_RESUMABLE.but(sweep=False), type=Path, default=None,
               help="where run folders go (default Results/<proj_name>)")
    add_option(run, "--log_every_n_steps", rules=TRAINING_RESUMABLE, type=positive_int, default=50,
               help="log the training loss to the console and TensorBoard every N optimizer steps")
    add_flag(run, "--debug", PLACE, help="show full tracebacks for user errors")
    add_flag(run, "--log_graph", TRAINING_RESUMABLE, default=True,
             help="write the model's graph to TensorBoard's Graphs tab")
    add_option(run, "--logger", rules=TRAINING, type=logger_names, default=["tensorboard"], metavar="NAMES",
               help=f"where scalars go, comma-separated: {', '.join(LOGGERS)} (csv: metrics.csv in the run "
                    "folder; mlflow and wandb need their packages) (default: tensorboard)")
    add_option(run, "--mlflow_uri", rules=TRAINING, type=mlflow_uri, default=None, metavar="URI",
               help="with --logger mlflow: the tracking URI or a local folder (default: $MLFLOW_TRACKING_URI, "
                    "else ./mlruns, a file store)")

    debug = parser.add_argument_group("debug runs")
    add_option(debug, "--fast_dev_run", rules=TRAINING.but(sweep=False), type=non_negative_int, nargs="?", const=2,
               default=0, metavar="N",
               help="N batches (2 if N is left out) of train, val and test, one epoch, through every step "
                    "of a real run, in a folder named <timestamp>_fast_dev_run (0 = off)")
    add_option(debug, "--overfit_batches", rules=TRAINING, type=non_negative_int, default=0, metavar="N",
               help="train and validate on the same N training batches: the loss should fall towards "
                    "zero, the first check of a new model or loss (0 = off)")

    data = parser.add_argument_group("data")
    add_option(data, "--data_type", rules=SPLIT, choices=data_types, default=data_types[0], help="dataset")
    add_option(data, "--data_dir", rules=PLACE, type=Path, default=Path("Dataset"), help="dataset folder")
    add_option(data, "--train_val_sample_rate", rules=SPLIT, type=fraction, default=1.0,
               help="seeded fraction of the train+val pool to use, for quick runs")
    add_option(data, "--test_sample_rate", rules=SPLIT, type=fraction, default=1.0,
               help="seeded fraction of the test set to use, for quick runs")
    add_option(data, "--val_ratio", rules=SPLIT, type=ratio, default=0.1,
               help="fraction of the pool held out for validation")
    add_option(data, "--batch_size", rules=SHARED, type=positive_int, default=64,
               help="samples per batch (per process)")
    add_option(data, "--eval_batch_size", rules=SHARED, type=positive_int, default=None,
               help="batch size for validation and test (default: --batch_size)")
    add_option(data, "--num_workers", rules=PLACE, type=non_negative_int, default=0,
               help="DataLoader workers for datasets read from files (in-memory data needs none)")
    add_flag(data, "--pin_memory", PLACE, default=True, help="pinned host memory for faster copies to the GPU")

    model = parser.add_argument_group("model")
    add_option(model, "--model_type", rules=TRAINING, choices=model_types, default=model_types[0], help="network")
    add_option(model, "--model_path", rules=PLACE.but(sweep=False), type=Path, default=None,
               help="checkpoint with initial weights (with --pretrained)")
    add_flag(model, "--pretrained", TRAINING_RESUMABLE, help="start from the weights in --model_path")
    add_flag(model, "--partial_load", TRAINING_RESUMABLE,
             help="load only the weights that fit, logging what was skipped")

    optim = parser.add_argument_group("optimization")
    add_option(optim, "--n_epoch", rules=TRAINING_RESUMABLE, type=positive_int, default=10, help="number of epochs")
    add_option(optim, "--optim", rules=TRAINING, choices=OPTIMIZERS, default="adam", help="optimizer")
    add_option(optim, "--lr", rules=TRAINING, type=positive_float, default=1e-3, help="learning rate")
    add_option(optim, "--weight_decay", rules=TRAINING, type=non_negative_float, default=0.0, help="weight decay")
    add_option(optim, "--momentum", rules=TRAINING, type=non_negative_float, default=0.9, help="momentum (sgd)")
    add_option(optim, "--lr_scheduler", rules=TRAINING, choices=SCHEDULERS, default="none",
               help="lr schedule; plateau decays on the --monitor metric, per epoch")
    add_option(optim, "--lr_interval", rules=TRAINING, choices=("step", "epoch"), default=None,
               help="advance the schedule every optimizer step or every epoch "
                    "(default: step for cosine, linear and onecycle, epoch for the others)")
    add_option(optim, "--min_lr", rules=TRAINING, type=non_negative_float, default=0.0,
               help="the lr cosine, linear and onecycle end at")
    add_option(optim, "--warmup_epoch", rules=TRAINING, type=non_negative_int, default=0,
               help="epochs of linear lr warm-up")
    add_option(optim, "--warmup_steps", rules=TRAINING, type=non_negative_int, default=0,
               help="optimizer steps of linear lr warm-up (with --lr_interval step; instead of --warmup_epoch)")
    add_option(optim, "--lr_decay_epochs", rules=TRAINING, type=positive_int, nargs="+", default=[30],
               help="step: decay every N epochs (first value); multistep: the milestones")
    add_option(optim, "--lr_decay_rate", rules=TRAINING, type=positive_float, default=0.1,
               help="lr multiplier at each decay")
    add_option(optim, "--plateau_patience", rules=TRAINING, type=non_negative_int, default=5,
               help="plateau: epochs without improvement before the lr decays")
    add_option(optim, "--clip", rules=TRAINING, type=non_negative_float, default=0.0,
               help="gradient clipping threshold (0 = off)")
    add_option(optim, "--clip_mode", rules=TRAINING, choices=("norm", "value"), default="norm",
               help="clip the global gradient norm, or each gradient value")
    add_option(optim, "--accum_steps", rules=TRAINING, type=positive_int, default=1,
               help="micro-batches per optimizer step; the loss is scaled so K batches of B equal one of K*B")
    add_option(optim, "--global_batch_size", rules=TRAINING_RESUMABLE.but(sweep=False), type=positive_int,
               default=None, metavar="G",
               help="samples per optimizer step over all processes, G = batch_size x processes x accum_steps: "
                    "give it with one of --batch_size / --accum_steps and the other follows; a resume on "
                    "another number of processes keeps it (default: what the other two give)")
    add_flag(optim, "--skip_nonfinite", TRAINING,
             help="skip batches whose loss is NaN/inf (counted) instead of stopping")
    add_option(optim, "--ema_decay", rules=TRAINING, type=ratio, default=0.0,
               help="average of the weights, updated every optimizer step, validated as val_ema/* "
                    "(0 = off; typical 0.999 to 0.9999)")
    add_flag(optim, "--ema_warmup", TRAINING, default=True,
             help="with --ema_decay: decay min(D, (1+t)/(10+t)) at update t, so early averages forget the "
                  "initialisation")
    add_option(optim, "--ema_every_n_steps", rules=TRAINING, type=positive_int, default=1,
               help="with --ema_decay: update the average every N optimizer steps, with the decay of the N steps "
                    "it stands for, so it spans the same samples at 1/N of the cost")

    finder = parser.add_argument_group("learning-rate range test")
    add_flag(finder, "--lr_find", TRAINING_RESUMABLE.but(sweep=False),
             help="before training, the lr range test: lr_find.png and .csv in the run folder, "
             "the suggested lr in the log; no training unless --lr_find_apply")
    add_flag(finder, "--lr_find_apply", TRAINING_RESUMABLE,
             help="with --lr_find: train with the suggested lr (kept as --lr in config.json)")
    add_option(finder, "--lr_find_min", rules=TRAINING_RESUMABLE, type=positive_float, default=1e-7,
               help="the test's first lr")
    add_option(finder, "--lr_find_max", rules=TRAINING_RESUMABLE, type=positive_float, default=10.0,
               help="the test's last lr")
    add_option(finder, "--lr_find_steps", rules=TRAINING_RESUMABLE, type=positive_int, default=200,
               help="optimizer steps of the test")

    select = parser.add_argument_group("checkpoints and early stopping")
    add_option(select, "--monitor", rules=TRAINING.but(sweep=False), default="val/loss",
               help="metric for the best checkpoint AND early stopping, as <phase>/<metric>")
    add_option(select, "--monitor_mode", rules=TRAINING.but(sweep=False), choices=("min", "max"), default="min",
               help="whether lower or higher is better")
    add_option(select, "--early_stop_patience", rules=TRAINING, type=non_negative_int, default=0,
               help="stop after N epochs without improvement (0 = off)")
    add_option(select, "--early_stop_delta", rules=TRAINING, type=non_negative_float, default=0.0,
               help="smallest change that counts as an improvement")
    add_option(select, "--save_top_k", rules=TRAINING, type=non_negative_int, default=0,
               help="also keep the K best epochs' checkpoints by --monitor, as "
                    "<model_type>_epoch<N>_<metric><value>.pth (0 = off)")
    add_option(select, "--save_every_n_steps", rules=TRAINING_RESUMABLE, type=non_negative_int, default=0,
               help="also save the full state every N optimizer steps, for mid-epoch resume (0 = off)")
    add_option(select, "--resume", rules=TRAINING_RESUMABLE.but(sweep=False, in_files=False), type=Path, default=None,
               help="checkpoint or run folder to continue, in the same folder; 'auto': the newest resumable run "
                    "of this task and --run_name, or a new run when there is none (see README, Clusters)")
    add_option(select, "--run_name", rules=TRAINING_RESUMABLE.but(sweep=False), default=None, metavar="NAME",
               help="the run folder's name instead of a timestamp, so that a requeued job finds its run "
                    "(with --resume auto)")

    scale = parser.add_argument_group("devices and speed")
    add_option(scale, "--gpu_devices", rules=PLACE, nargs="+", default=None,
               help="GPU ids to use, or 'cpu' (default: first GPU if there is one, else CPU)")
    add_flag(scale, "--parallel", SHARED, help="DataParallel over --gpu_devices (legacy; prefer torchrun for DDP)")
    add_flag(scale, "--sync_bn", TRAINING, help="synchronise BatchNorm statistics across DDP processes")
    add_flag(scale, "--amp", SHARED, help="automatic mixed precision")
    add_option(scale, "--amp_dtype", rules=SHARED, choices=("bf16", "fp16"), default="bf16",
               help="autocast dtype; fp16 adds a checkpointed GradScaler")
    add_flag(scale, "--compile", PLACE, help="torch.compile the model")
    add_option(scale, "--compile_backend", rules=PLACE, default="inductor",
               help="torch.compile backend (inductor needs a C++ compiler on the CPU; eager for debugging)")
    add_flag(scale, "--channels_last", SHARED, help="channels_last memory layout (conv nets)")


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


def parse_training_options(parser, argv, task):
    """`argv` parsed for training: a --config file's values as defaults, and with --resume the
    checkpoint's options for those not given (refusing a change a resume cannot make). Returns (the
    options, the checkpoint to resume or None); `task` is the task's name, which the checkpoint must name."""
    from cli.config_file import config_file_in, read_config_file
    from state.checkpoint import find_checkpoint, read_checkpoint
    argv = [str(arg) for arg in argv]
    config = config_file_in(argv)
    if config is not None:  # the file's values become defaults: flags given here override them
        parser.set_defaults(**read_config_file(config, parser))
    args = parser.parse_args(argv)
    show_tracebacks(args.debug)  # from here on, a config file's `debug: true` counts too
    if args.fast_dev_run:  # one short epoch, every step logged
        args.n_epoch, args.log_every_n_steps = 1, 1
    check_installed(args.logger)
    if "mlflow" in args.logger and args.mlflow_uri is None:  # the store this run and its resumes use
        args.mlflow_uri = mlflow_uri(os.environ.get("MLFLOW_TRACKING_URI") or "mlruns")
    auto = wants_auto(args)
    if auto:
        args.resume = auto_resume(args, task, lambda checkpoint: agrees_with(parser, argv, args, checkpoint))
    else:
        args.resume = restarted_branch(args, task, lambda checkpoint: agrees_with(parser, argv, args, checkpoint))
    if args.resume is None:
        check_new_named_run(args)
        mark_following_option(parser, argv, args)
        return args, None
    if config is not None and not auto:  # a requeued job repeats its command line, --config included
        raise UserError(f"--config {config} with --resume: a resumed run keeps its checkpoint's options; "
                        "give only the flags a resume may change")
    path = find_checkpoint(args.resume)
    checkpoint = read_checkpoint(path, task)
    saved = checkpoint["config"]
    args = merge_options(parser, argv, args, saved, resume_safe_options(parser, saved) | batch_split(checkpoint))
    mark_following_option(parser, argv, args, checkpoint["global_batch"])
    if "lr_interval" not in saved:  # written before per-step schedules: its schedule stepped per epoch
        args.lr_interval = "epoch"
    if args.fast_dev_run and args.n_epoch != 1:
        raise UserError(f"--n_epoch {args.n_epoch} with --resume of a --fast_dev_run run: it trains one short epoch; "
                        "start a real run without --fast_dev_run")
    args.resume = path
    return args, checkpoint


def agrees_with(parser, argv, args, checkpoint):
    """Whether `checkpoint`'s run is the experiment `argv` describes: its resume would accept the options,
    global batch included, exactly as the resume checks them."""
    saved = checkpoint["config"]
    try:
        merged = merge_options(parser, argv, args, saved, resume_safe_options(parser, saved) | batch_split(checkpoint))
        mark_following_option(parser, argv, merged, checkpoint["global_batch"])
    except UserError:
        return False
    return True


def check_training_options(args, metric_names, world_size=1):
    """What a training run's options must satisfy before anything is built: the global batch on
    `world_size` processes, the monitor, the schedule, and (a new run) an output folder it can write."""
    resolve_global_batch(args, world_size)
    check_monitor(args, metric_names)
    check_schedule(args)
    output = Path(args.output_dir or Path("Results") / args.proj_name).absolute()
    if args.resume is None:  # checked without creating anything: bad input leaves no folder behind
        existing = next(folder for folder in (output, *output.parents) if folder.exists())
        if not existing.is_dir():
            raise UserError(f"cannot create a run folder in --output_dir {args.output_dir or output}: "
                            f"{existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot create a run folder in --output_dir {args.output_dir or output}: "
                            f"{existing} is not writable")


def batch_split(checkpoint):
    """--batch_size and --accum_steps, which a resume on another number of processes than the checkpoint's
    may change to keep its global batch (cli/global_batch.py checks that G stays); none otherwise."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    return {"batch_size", "accum_steps"} if processes != checkpoint["world_size"] else set()


def debug_run_suffix(args):
    """The run folder's suffix of a debug run: `_fast_dev_run`, `_overfit_batches`, or none."""
    return "_fast_dev_run" if args.fast_dev_run else "_overfit_batches" if args.overfit_batches else ""


def check_monitor(args, metric_names):
    """--monitor names a phase and one of the task's `metric_names`."""
    phase, _, name = args.monitor.partition("/")
    phases = ("val", "train", "val_ema") if args.ema_decay else ("val", "train")
    if phase not in phases or name not in metric_names:
        choices = ", ".join(f"{p}/{n}" for p in phases for n in metric_names)
        raise UserError(f"--monitor {args.monitor} is not a metric of this task; expected one of {choices}")


def json_value(value):
    """`value` as config.json stores it (paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def merge_options(parser, argv, args, saved, safe=None, also_given=()):
    """Saved options, overridden by those given explicitly in `argv` (or named in `also_given`: set by a
    config file).

    With `safe` (a resume), an explicit option outside `safe` that differs from the saved value
    would change the experiment, and is refused with each such option named.
    """
    given = explicit_options(parser, argv) | set(also_given)
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


def resume_safe_options(parser, saved):
    """The options a run resumed from a checkpoint with the `saved` options may change."""
    safe = options_where(parser, lambda rules: rules.resume)
    if saved.get("lr_scheduler") in SCHEDULES_OVER_N_EPOCH:
        safe.discard("n_epoch")  # the schedule is laid out over n_epoch: changing it changes every later lr
    return safe


def _why_unsafe(name, saved):
    if name == "n_epoch" and saved.get("lr_scheduler") in SCHEDULES_OVER_N_EPOCH:
        return f"; its {saved['lr_scheduler']} lr schedule spans n_epoch, and a resume keeps the checkpoint's schedule"
    return ""
