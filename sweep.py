"""Sweeps on Optuna: many runs of a task script, each an ordinary run folder, resumable as a whole.

    python sweep.py trainer_vanilla.py --n_trials 20 --space lr=loguniform:1e-4:1e-1 \\
        batch_size=choice:32,64,128 dropout=uniform:0:0.5 -- --n_epoch 5 --data_dir Dataset
    python sweep.py trainer_vanilla.py --space lr=grid:1e-3,1e-2 batch_size=grid:32,64 -- --n_epoch 5
    python sweep.py trainer_vanilla.py --space space.yaml -- --config configs/vanilla.yaml
    python sweep.py --table Results/Vanilla/sweep_vanilla          the table of a sweep, now

After `--` come the task script's own options, shared by every trial; `--space` names the options
that vary (sweeps/space.py). The objective is the best value of the task's `--monitor` over
a trial's epochs (maximised or minimised as its `--monitor_mode` says).

- The study lives in an Optuna storage (sweeps/storage.py): `study.db` (SQLite) in the sweep folder,
  or `--storage` postgresql://... / mysql://... / journal:PATH, which workers on many machines share
  (nothing else: each keeps its trials' run folders, or puts them in a shared `--trial_dir`).
  `--n_trials` is the study's total. A trial whose worker stops beating (`--heartbeat`) is retried
  by another. `--n_jobs N` runs N trials at a time on this machine; with `--gpus 0,1,...` each gets
  one; `--nproc_per_trial N` runs each under torchrun.
- Each trial is an ordinary run of the script, `Results/<proj_name>/sweep_<name>/<timestamp>_trial<N>/`
  (config, checkpoints, TensorBoard, metrics.json), its console output in `logs/trial_<N>.txt`.
  After each epoch it reports the monitor to the pruner (`--pruner median` or `halving`); a pruned
  trial stops there, with status "pruned" in its metrics.json and no test.
- Stopped (Ctrl+C, SIGTERM, SIGKILL, a lost machine), the same command continues the sweep: the
  finished trials are kept, and a trial that was running resumes from its last checkpoint, exactly
  (a trial that had saved nothing starts again with the same values). The sweep's options may
  change between starts (more `--n_trials`, other `--n_jobs`); the script, space and task options
  may not: another sweep needs another `--name`.
- At the end it prints the trials (a row per trial, a column per swept option, the objective and
  the test metrics, the best marked) and writes them to `trials.csv`; `--table` adds the parameters'
  importances and PNG plots; `tensorboard --logdir <sweep folder>` shows every trial in HPARAMS.
Needs `pip install optuna` (SQLAlchemy comes with it). Linux and macOS (a trial's process holds an
flock on a local file of its worker, which tells a sweep started again on that machine it is gone).
"""
import os
import sys
from pathlib import Path

from sweeps.runner import Sweep
from sweeps.space import grid_size, parse_space
from sweeps.storage import storage_spec
from sweeps.study import open_study, pruner_settings, record, sampler_maker
from sweeps.table import show_table, table_of
from sweeps.task_script import check_constraints, check_space, load_trainer, task_options
from utils.errors import UserError, import_optional, run_cli


def build_parser():
    from cli.options import Parser, non_negative_int, positive_int
    parser = Parser(description=__doc__.splitlines()[0], usage="%(prog)s SCRIPT [options] -- "
                    "[the script's options]\n       %(prog)s --table SWEEP_FOLDER")
    parser.add_argument("script", nargs="?", type=Path, help="the task script, e.g. trainer_vanilla.py")
    parser.add_argument("--space", nargs="+", default=None, metavar="NAME=KIND:...",
                        help="the swept options, or one .yaml/.json file of them (see sweeps/space.py)")
    parser.add_argument("--n_trials", type=positive_int, default=None,
                        help="trials in the study, counting those of earlier starts (default 20; a grid: its size)")
    parser.add_argument("--name", default=None, help="the sweep's name: sweep_<name> and the study (default: the script's task)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="where the study lives: a sqlite:///, postgresql:// or mysql:// URL, or journal:PATH "
                             "(default: study.db in the sweep folder, one machine)")
    parser.add_argument("--heartbeat", type=positive_int, default=None, metavar="S",
                        help="workers beat every S seconds; a trial whose worker missed two beats is retried by "
                             "another (default: 60 on a database server or a journal, none on SQLite)")
    parser.add_argument("--trial_dir", type=Path, default=None, metavar="FOLDER",
                        help="where the trials' run folders go (default: the sweep folder); on storage every "
                             "worker reaches, a retried trial resumes from its checkpoint")
    parser.add_argument("--nproc_per_trial", type=positive_int, default=1, metavar="N",
                        help="processes of each trial (DDP with torchrun; rank 0 talks to the study)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                        help="how values are drawn (a grid: space visits its points in order)")
    parser.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                        help="stop trials that do worse at an epoch than the median of the others, or successive halving")
    parser.add_argument("--startup_trials", type=non_negative_int, default=2, help="median: trials finished before any is pruned")
    parser.add_argument("--warmup_epochs", type=non_negative_int, default=1, help="no trial is pruned before this many epochs")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the sampler's seed")
    parser.add_argument("--n_jobs", type=positive_int, default=None, help="trials run at a time here (default: 1, or one per --gpus)")
    parser.add_argument("--gpus", default=None, metavar="LIST", help="comma-separated GPU ids, one trial on each at a time")
    parser.add_argument("--table", type=Path, default=None, metavar="SWEEP_FOLDER", help="print a sweep's table and exit")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    split = argv.index("--") if "--" in argv else len(argv)
    own, task_argv = argv[:split], argv[split + 1:]
    parser = build_parser()
    unknown = [] if "--" in argv else parser.parse_known_args(own)[1]
    if unknown:
        parser.error(f"{parser.unrecognized(unknown)}; the task script's options go after --, as in "
                     f"sweep.py SCRIPT --space ... -- {' '.join(unknown)}")
    args = parser.parse_args(own)
    import_optional("optuna", "optuna", "sweep.py")
    if os.name == "nt":
        raise UserError("sweep.py needs Linux or macOS: a trial's process holds an flock file lock")
    if args.table is not None:
        return table_of(args.table, args.storage)
    if args.script is None or not args.space:
        parser.error("give the task script and --space (or --table SWEEP_FOLDER)")
    if any(arg == "--resume" or arg.startswith("--resume=") for arg in task_argv):
        raise UserError("--resume after --: a sweep resumes its own trials; start the same sweep command again")
    params = parse_space(args.space)
    trainer = load_trainer(args.script)
    task_parser, options = task_options(trainer, task_argv)
    check_space(params, task_parser, task_argv)
    check_constraints(params, task_parser, task_argv, trainer.task_class.metric_names)
    grid = grid_size(params)
    n_trials = args.n_trials if args.n_trials is not None else grid or 20
    if grid and n_trials > grid:
        raise UserError(f"--n_trials {n_trials}: the grid has {grid} points; expected at most {grid}")
    devices = [d.strip() for d in args.gpus.split(",") if d.strip()] if args.gpus else []
    n_jobs = args.n_jobs or max(1, len(devices))

    name = args.name or Path(args.script).stem.removeprefix("trainer_")
    folder = ((options.output_dir or Path("Results") / options.proj_name) / f"sweep_{name}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if options.monitor_mode == "max" else "minimize"
    given = storage_spec(args.storage, folder) if args.storage else None
    space = {param.name: param.describe() for param in params}
    saved = record(folder, {"script": str(Path(args.script).resolve()), "study": name, "task_options": task_argv,
                            "space": space, "monitor": options.monitor, "direction": direction,
                            "storage": given.public if given else None,
                            "resolved_options": resolved_options(options, params)})
    spec = given or storage_spec(saved, folder)  # a saved URL has no password: PGPASSWORD or ~/.pgpass gives it
    if args.heartbeat is None and spec.kind != "sqlite":
        args.heartbeat = 60
    study = open_study(spec, folder, name, direction, params, args,
                       {"script": Path(args.script).name, "space": space, "monitor": options.monitor})
    print(f"sweep {name}: {n_trials} trials of {args.script}, {direction} {options.monitor}, in {folder}"
          + (f", study in {spec.public}" if args.storage or saved else ""), flush=True)
    trial_dir = args.trial_dir.resolve() if args.trial_dir else None
    sweep = Sweep(folder, study, sampler_maker(params, args), params, Path(args.script).resolve(), task_argv, n_trials,
                  devices, storage=spec, heartbeat=args.heartbeat, trial_dir=trial_dir,
                  nproc_per_trial=args.nproc_per_trial, pruner=pruner_settings(args))
    code = sweep.run(n_jobs)
    print()
    show_table(study, params, folder)
    return code



def resolved_options(options, params):
    """The task options every trial shares, as the parser resolved them (a --config file's values
    included): what a later start of the sweep must match. The swept ones vary by trial."""
    from cli.arguments import json_value
    swept = {param.name for param in params}
    return {name: value for name, value in json_value(vars(options)).items() if name not in swept}


if __name__ == "__main__":
    sys.exit(run_cli(main))
