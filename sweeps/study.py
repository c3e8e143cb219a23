"""The sweep's Optuna study: sweep.json (what defines the sweep), the storage it lives in, opening
it with its pruner (a grid's points enqueued), and the seeded sampler of each new trial."""
import itertools
import json
from pathlib import Path

from sweeps.space import grid_size
from utils.errors import UserError


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
        differ = [f"{key} ({saved.get(key)} there)" for key in ("script", "space") if saved.get(key) != content[key]]
        differ += changed_options(saved, content)
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


def changed_options(saved, content):
    """The task options whose resolved values (a --config file's included) differ from the sweep's,
    each with its value there; the argv text for a sweep.json written before they were kept."""
    if "resolved_options" not in saved:
        return [f"task_options ({saved.get('task_options')} there)"] \
            if saved.get("task_options") != content["task_options"] else []
    before, now = saved["resolved_options"], content["resolved_options"]
    return [f"--{name} ({before.get(name)} there, {now.get(name)} here)" for name in sorted(set(before) | set(now))
            if before.get(name) != now.get(name)]


def read_json_file(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: not readable ({error}); expected the sweep.json of a sweep folder") from None
