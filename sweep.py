"""Sweeps on Optuna: many runs of a task script, each an ordinary run folder, resumable as a whole.

    python sweep.py trainer_vanilla.py --n_trials 20 --space lr=loguniform:1e-4:1e-1 \\
        batch_size=choice:32,64,128 dropout=uniform:0:0.5 -- --n_epoch 5 --data_dir Dataset
    python sweep.py trainer_vanilla.py --space lr=grid:1e-3,1e-2 batch_size=grid:32,64 -- --n_epoch 5
    python sweep.py trainer_vanilla.py --space space.yaml -- --config configs/vanilla.yaml
    python sweep.py --table Results/Vanilla/sweep_vanilla          the table of a sweep, now

After `--` come the task script's own options, shared by every trial; `--space` names the options
that vary (sweeps/space.py). The objective is the best value of the task's `--monitor` over
a trial's epochs (maximised or minimised as its `--monitor_mode` says).

- The study lives in an Optuna storage: `study.db` (SQLite) in the sweep folder unless `--storage`
  names another database URL Optuna accepts (e.g. postgresql://...), which several machines can
  share. `--n_jobs N` runs N trials at a time on this machine; with `--gpus 0,1,...` each gets one.
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
  the test metrics, the best marked) and writes them to `trials.csv`;
  `tensorboard --logdir <sweep folder>` shows every trial in the HPARAMS tab.
Needs `pip install optuna` (SQLAlchemy comes with it). Linux and macOS (it locks files with flock).
"""
import difflib
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError, import_optional, run_cli
from sweeps.space import as_argument, grid_size, parse_space

FINAL_STATUSES = ("completed", "early_stopped", "pruned")
NOT_SWEPT = ("resume", "config", "print_config", "output_dir", "proj_name", "monitor", "monitor_mode", "model_path",
             "fast_dev_run", "lr_find")


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
    parser.add_argument("--storage", default=None, help="an Optuna database URL (default: sqlite, study.db in the sweep folder)")
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


# ------------------------------------------------------------------ the task script and its options
def load_trainer(script):
    """The TrainerBase subclass that the task `script` defines."""
    from trainer import TrainerBase
    path = Path(script)
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"{script}: no such Python file; expected a task script such as trainer_vanilla.py")
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [value for value in vars(module).values() if isinstance(value, type)
               and issubclass(value, TrainerBase) and value.__module__ == module.__name__]
    if len(classes) != 1:
        raise UserError(f"{script} defines {len(classes)} trainers (TrainerBase subclasses); expected a task script "
                        "with one, such as trainer_vanilla.py")
    return classes[0]


def task_options(trainer, argv):
    """The task's parser (its errors raised as UserError) and `argv` parsed with it."""
    from cli.config_file import config_file_in, read_config_file

    def fail(message):
        raise UserError(f"the options after --: {message}")
    parser = trainer.build_parser()
    parser.error = fail
    config = config_file_in(argv)
    if config is not None:
        parser.set_defaults(**read_config_file(config, parser))
    return parser, parser.parse_args(argv)


def check_space(params, parser, argv):
    """Every swept option exists, is not also fixed after --, and takes each of its values."""
    from cli.options import explicit_options
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    given = explicit_options(parser, argv)
    for param in params:
        name = param.name
        if name not in actions:
            close = difflib.get_close_matches(name, list(actions), n=3, cutoff=0.7)
            raise UserError(f"--space {name}: not an option of the task script"
                            + (f"; did you mean {' or '.join(close)}?" if close else ""))
        if name in NOT_SWEPT or actions[name].nargs not in (None, "?"):
            raise UserError(f"--space {name}: this option cannot be swept (it is fixed for a sweep, or takes a list)")
        if name in given:
            raise UserError(f"--space {name} and --{name} after --: an option is either swept or fixed")
        for value in param.examples():
            def fail(message, value=value):
                raise UserError(f"--space {name}={param.describe()}: the task refuses {as_argument(value)} ({message})")
            parser.error = fail
            parser.parse_args([*argv, f"--{name}", as_argument(value)])


# ------------------------------------------------------------------ locks
@contextmanager
def file_lock(path):
    """An exclusive flock on `path` for the block (waits for it)."""
    import fcntl
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def try_lock(path):
    """An open descriptor holding an exclusive flock on `path`, or None when another process (or a
    trial it started) holds it. The lock lasts as long as a process keeps the descriptor."""
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


# ------------------------------------------------------------------ the sweep
class Sweep:
    def __init__(self, folder, study, make_sampler, params, script, task_argv, n_trials, devices):
        self.folder, self.study, self.make_sampler, self.params = folder, study, make_sampler, params
        self.script, self.task_argv, self.n_trials = script, task_argv, n_trials
        self.devices = devices
        self.lock = threading.Lock()  # one thread at a time talks to the study
        self.stopping = threading.Event()
        self.children = {}  # trial number -> its process
        self.failed = False  # a worker died of an exception (its traceback is printed)
        (folder / "logs").mkdir(exist_ok=True)

    def run(self, n_jobs):
        """Run trials until the study holds n_trials finished ones; returns the exit code."""
        self.n_jobs = n_jobs
        threads = [threading.Thread(target=self.worker, args=(self.devices[i % len(self.devices)]
                                                               if self.devices else None,), daemon=True)
                   for i in range(n_jobs)]
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.stop(signal.SIGTERM))
        try:
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):  # not join: a Ctrl+C in it can lose the thread
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:  # each press goes to the trials: the second stops them at once
                    self.stop(signal.SIGINT)
        finally:
            signal.signal(signal.SIGTERM, previous)
        for thread in threads:
            thread.join()
        if self.failed:
            print("sweep stopped by the error above; the same command continues it", flush=True)
            return 1
        if self.stopping.is_set():
            print("sweep stopped; the running trials saved their state. The same command continues it.", flush=True)
            return 130
        return 0

    def stop(self, signum):
        """Stop the running trials (they save their state) and start no new ones."""
        if not self.stopping.is_set():
            print("stopping: the running trials save their state and stop", flush=True)
        self.stopping.set()
        for process in list(self.children.values()):
            if process.poll() is None:
                process.send_signal(signum)

    def worker(self, device):
        try:
            while not self.stopping.is_set():
                job = self.claim()
                if job is None:
                    return
                if job == "wait":  # trials that other processes still run: they may need resuming here
                    self.stopping.wait(2)
                    continue
                try:
                    self.run_trial(*job, device)
                finally:
                    os.close(job[1])
        except BaseException:  # a bug, or the storage gone: the other trials stop and save too
            self.failed = True
            self.stop(signal.SIGTERM)
            raise

    def trial_lock(self, number):
        return self.folder / "logs" / f"trial_{number:04d}.lock"

    def claim(self):
        """The next trial to run here: a running trial whose process is gone, else a new one.
        Returns (trial, lock descriptor, values, whether new), "wait", or None when the study is done."""
        import optuna
        from optuna.trial import TrialState
        with self.lock, file_lock(self.folder / "sweep.lock"):
            trials = self.study.get_trials(deepcopy=False)
            for frozen in trials:
                if frozen.state == TrialState.RUNNING:
                    fd = try_lock(self.trial_lock(frozen.number))
                    if fd is None:
                        continue
                    frozen = self.study._storage.get_trial(frozen._trial_id)  # as it is now that it is ours
                    if frozen.state != TrialState.RUNNING:  # told by its process between the read and the lock
                        os.close(fd)
                        continue
                    if set(frozen.params) != {param.name for param in self.params}:  # killed while drawing
                        self.study.tell(frozen.number, state=TrialState.FAIL)
                        print(f"trial {frozen.number} failed (stopped before its values were drawn)", flush=True)
                        os.close(fd)
                        continue
                    return optuna.trial.Trial(self.study, frozen._trial_id), fd, frozen.params, False
            started = sum(frozen.state != TrialState.WAITING for frozen in trials)
            if started < self.n_trials:
                # Seeded by the trial's place: a sweep started again draws what it would have drawn.
                self.study.sampler = self.make_sampler(started)
                trial = self.study.ask()
                values = {param.name: param.suggest(trial) for param in self.params}
                fd = try_lock(self.trial_lock(trial.number))
                assert fd is not None, f"trial {trial.number} is new, its lock must be free"
                return trial, fd, values, True
            return "wait" if any(frozen.state == TrialState.RUNNING for frozen in trials) else None

    def frozen(self, trial):
        """The trial as the storage has it now (Optuna has no public read of one trial)."""
        with self.lock:
            return self.study._storage.get_trial(trial._trial_id)

    def run_trial(self, trial, lock_fd, values, new, device):
        if self.stopping.is_set():  # it stays running in the study: the next start takes it
            return
        number, frozen = trial.number, self.frozen(trial)
        folder = Path(frozen.user_attrs["run_folder"]) if "run_folder" in frozen.user_attrs else None
        status = read_metrics(folder).get("status")
        shown = " ".join(f"{name}={as_argument(value)}" for name, value in values.items())
        if status in FINAL_STATUSES:  # it ended while the sweep was not there to record it
            return self.tell(trial, folder, 0)
        if folder is not None and any(folder.glob("*_last_ckpt.pth")):
            command, how = [self.script, "--resume", folder], f"resumed from {folder.name}"
        else:
            for old in [*self.folder.glob(f"*_trial{number:04d}"), *self.folder.glob(f"*_trial{number:04d}_*")]:
                if old.is_dir() and old.suffix != ".restarted":  # it saved nothing: it starts again, this set aside
                    old.rename(old.with_name(old.name + ".restarted"))
            command = [self.script, *self.task_argv, *(item for name, value in values.items()
                                                       for item in (f"--{name}", as_argument(value))),
                       "--output_dir", self.folder]
            how = "started" if new else "started again"
        print(f"trial {number} {how}: {shown}", flush=True)
        code = self.launch(trial, [sys.executable, *map(str, command)], lock_fd, device)
        folder = self.frozen(trial).user_attrs.get("run_folder")
        folder = Path(folder) if folder else None
        if self.stopping.is_set() and read_metrics(folder).get("status") not in FINAL_STATUSES:
            print(f"trial {number} stopped (it continues when the sweep is started again)", flush=True)
            return
        self.tell(trial, folder, code)

    def launch(self, trial, command, lock_fd, device):
        """Run the trial's process, answering its reports; returns its exit code."""
        to_child, from_child = os.pipe(), os.pipe()
        spec = {"trial": trial.number, "fds": [to_child[0], from_child[1]], "parent": os.getpid()}
        env = dict(os.environ, TORCH_TEMPLATE_SWEEP=json.dumps(spec))
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        if self.n_jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # the trials share this machine's cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.n_jobs))
        with open(self.folder / "logs" / f"trial_{trial.number:04d}.txt", "a") as log:
            # Its own session: a Ctrl+C reaches the sweep alone, which passes it on once per press.
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       pass_fds=(to_child[0], from_child[1], lock_fd), start_new_session=True)
        self.children[trial.number] = process
        if self.stopping.is_set():
            process.send_signal(signal.SIGTERM)
        os.close(to_child[0])
        os.close(from_child[1])
        with os.fdopen(from_child[0]) as reader, os.fdopen(to_child[1], "w") as writer:
            for line in reader:
                message = json.loads(line)
                if "run_folder" in message:
                    with self.lock:
                        trial.set_user_attr("run_folder", str(Path(message["run_folder"]).resolve()))
                    answer = {}
                else:
                    answer = {"prune": self.decide(trial, message["epoch"], message["value"], message.get("last"))}
                try:
                    writer.write(json.dumps(answer) + "\n")
                    writer.flush()
                except BrokenPipeError:
                    break
        code = process.wait()
        del self.children[trial.number]
        return code

    def decide(self, trial, epoch, value, last=False):
        """Report the trial's monitor after `epoch`; whether the pruner stops it there (never after
        its `last` epoch: it is trained, it gets its test). An epoch reported before (a resumed trial
        that repeats it) gets the decision it got then."""
        frozen = self.frozen(trial)
        with self.lock:
            if epoch in frozen.intermediate_values:
                return frozen.user_attrs.get("pruned_at") == epoch
            trial.report(float(value), epoch)
            prune = not last and bool(trial.should_prune())
            if prune:
                trial.set_user_attr("pruned_at", epoch)
        return prune

    def tell(self, trial, folder, code):
        from optuna.trial import TrialState
        metrics = read_metrics(folder)
        status, best = metrics.get("status"), metrics.get("best_value")
        with self.lock, file_lock(self.folder / "sweep.lock"):  # never between another process's read and lock
            if status == "pruned":  # the status is written last: the run got that far, whatever its exit code
                self.study.tell(trial.number, state=TrialState.PRUNED)
                outcome = f"pruned after epoch {metrics.get('epochs_done')}"
            elif status in FINAL_STATUSES and isinstance(best, (int, float)) and math.isfinite(best):
                self.study.tell(trial.number, best)
                outcome = f"complete: best {metrics.get('monitor')} {best:.6g}"
            else:
                self.study.tell(trial.number, state=TrialState.FAIL)
                log = self.folder / "logs" / f"trial_{trial.number:04d}.txt"
                outcome = f"failed (exit code {code}: {last_line(log)}; see {log})"
        print(f"trial {trial.number} {outcome}", flush=True)


def last_line(path):
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def read_metrics(folder):
    if folder is None:
        return {}
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


# ------------------------------------------------------------------ the table
def trial_table(study, params):
    """(header, rows of plain values) of every trial: number, state, swept values, the objective,
    epochs, test metrics, run folder; the best trial marked with *."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    try:
        best = study.best_trial.number
    except ValueError:  # no trial completed yet
        best = None
    metrics = {t.number: read_metrics(t.user_attrs["run_folder"]) if "run_folder" in t.user_attrs else {}
               for t in trials}
    monitor = next((m["monitor"] for m in metrics.values() if "monitor" in m), "objective")
    tests = list(dict.fromkeys(name for m in metrics.values() for name in (m.get("test") or {})))
    header = ["best", "trial", "state", *(param.name for param in params), f"best {monitor}", "epochs", *tests, "run"]
    rows = []
    for t in trials:
        m = metrics[t.number]
        value = t.value if t.state == TrialState.COMPLETE else m.get("best_value")
        rows.append(["*" if t.number == best else "", t.number, t.state.name.lower(),
                     *(t.params.get(param.name) for param in params), value, m.get("epochs_done"),
                     *((m.get("test") or {}).get(name) for name in tests),
                     Path(t.user_attrs["run_folder"]).name if "run_folder" in t.user_attrs else None])
    return header, rows


def show_table(study, params, folder):
    """Print the table and write it to trials.csv (atomically)."""
    import csv
    from utils.atomic import atomic_open
    from cli.configcmp import format_table, format_value
    header, rows = trial_table(study, params)
    print(format_table(header, [["-" if value is None else value if isinstance(value, str) else format_value(value)
                                 for value in row] for row in rows]))
    with atomic_open(folder / "trials.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if value is None else value for value in row] for row in rows])
    print(f"\n{folder / 'trials.csv'}; every trial in TensorBoard's HPARAMS tab: tensorboard --logdir {folder}")


# ------------------------------------------------------------------ set-up
def storage_for(url, folder):
    """Optuna's storage of `url` (None: study.db in the sweep `folder`); SQLite waits for its lock
    instead of failing while other processes write."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = url or f"sqlite:///{Path(folder).resolve() / 'study.db'}"
    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 300}})
    return url


def open_study(url, folder, name, direction, params, args):
    import optuna
    try:
        storage = storage_for(url, folder)
        pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials,
                                                                n_warmup_steps=args.warmup_epochs),
                  "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, args.warmup_epochs)),
                  "none": optuna.pruners.NopPruner}[args.pruner]()
        study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                    sampler=sampler_maker(params, args)(0), pruner=pruner, load_if_exists=True)
        if grid_size(params):  # every point, in order, once: the trials asked next take them
            for point in itertools.product(*(param.values for param in params)):
                study.enqueue_trial(dict(zip((param.name for param in params), point)), skip_if_exists=True)
        return study
    except Exception as error:  # a bad URL, a missing driver, a database that does not answer (SQLAlchemy's errors)
        raise UserError(f"--storage {url or folder / 'study.db'}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0]}") from None


def sampler_maker(params, args):
    """A function of the number of trials started so far to the sampler of the next one, seeded
    with --seed and that number."""
    import optuna

    def make(started):
        seed = (args.seed * 1_000_003 + started) % 2**32
        if args.sampler == "random" or grid_size(params):  # a grid's trials are enqueued: nothing is drawn
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)
    return make


def record(folder, content):
    """sweep.json: what defines the sweep; a later start must match it, and uses its storage when
    it names none. Returns the storage URL (None: study.db in the folder)."""
    from utils.atomic import write_json_atomic
    path = folder / "sweep.json"
    if path.is_file():
        saved = read_json_file(path)
        differ = [key for key in ("script", "space", "task_options") if saved.get(key) != content[key]]
        if differ:
            raise UserError(f"{folder} holds a sweep with another {' and '.join(differ)} ({path}); continue it with "
                            "the same command, or give this one another --name")
        if content["storage"] is None:
            content["storage"] = saved.get("storage")
        elif content["storage"] != saved.get("storage"):
            raise UserError(f"--storage {content['storage']}: the sweep in {folder} keeps its study in "
                            f"{saved.get('storage') or 'study.db there'}; continue it there, or give this one another --name")
    write_json_atomic(content, path)
    return content["storage"]


def table_of(folder, storage):
    folder = Path(folder)
    saved = read_json_file(folder / "sweep.json")
    from sweeps.space import parse_param
    params = [parse_param(name, spec, str(folder / "sweep.json")) for name, spec in saved["space"].items()]
    import optuna
    study = optuna.load_study(study_name=saved["study"], storage=storage_for(storage or saved.get("storage"), folder))
    show_table(study, params, folder)
    return 0


def read_json_file(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not readable ({error}); expected the sweep.json of a sweep folder") from None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    split = argv.index("--") if "--" in argv else len(argv)
    own, task_argv = argv[:split], argv[split + 1:]
    parser = build_parser()
    args = parser.parse_args(own)
    import_optional("optuna", "optuna", "sweep.py")
    if os.name == "nt":
        raise UserError("sweep.py needs Linux or macOS: it coordinates trials with flock file locks")
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
    storage = record(folder, {"script": str(Path(args.script).resolve()), "study": name, "task_options": task_argv,
                              "space": {param.name: param.describe() for param in params}, "monitor": options.monitor,
                              "direction": direction, "storage": args.storage})
    study = open_study(storage, folder, name, direction, params, args)
    print(f"sweep {name}: {n_trials} trials of {args.script}, {direction} {options.monitor}, in {folder}", flush=True)
    sweep = Sweep(folder, study, sampler_maker(params, args), params, Path(args.script).resolve(), task_argv, n_trials, devices)
    code = sweep.run(n_jobs)
    print()
    show_table(study, params, folder)
    return code


if __name__ == "__main__":
    sys.exit(run_cli(main))
