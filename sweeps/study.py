"""The sweep's Optuna study: sweep.json (what defines the sweep), opening the study in its storage
(sweeps/storage.py) with its pruner (a grid's points enqueued), and the seeded sampler of each new trial."""
import itertools
import json
from pathlib import Path

from sweeps.space import grid_size
from sweeps.storage import open_storage, storage_spec
from utils.errors import UserError


def make_pruner(settings):
    """Optuna's pruner of the sweep's settings {"pruner", "startup_trials", "warmup_epochs"}: the
    sweep builds it, and so does each trial, which takes its decisions itself (sweeps/link.py)."""
    import optuna
    kind = settings["pruner"]
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                           n_warmup_steps=settings["warmup_epochs"])
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, settings["warmup_epochs"]))
    return optuna.pruners.NopPruner()


def pruner_settings(args):
    return {"pruner": args.pruner, "startup_trials": args.startup_trials, "warmup_epochs": args.warmup_epochs}


def open_study(spec, folder, name, direction, params, args, definition=None):
    """The study `name` in the storage of `spec` (a StorageSpec; None: study.db in `folder`), created
    when it does not exist; a grid's points queued once. `definition` (what defines the sweep: its
    script's name, space, monitor) is kept in the study, and a worker with another one is refused."""
    import optuna
    spec = spec or storage_spec(None, folder)
    try:
        study = optuna.create_study(storage=open_storage(spec, getattr(args, "heartbeat", None)), study_name=name,
                                    direction=direction, sampler=sampler_maker(params, args)(0),
                                    pruner=make_pruner(pruner_settings(args)), load_if_exists=True)
        if grid_size(params):  # every point, in order, once: the trials asked next take them
            for point in itertools.product(*(param.values for param in params)):
                study.enqueue_trial(dict(zip((param.name for param in params), point)), skip_if_exists=True)
    except Exception as error:  # a bad URL, a missing driver, a database that does not answer (SQLAlchemy's errors)
        raise UserError(f"--storage {spec.public}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else 'no answer'}") from None
    if definition is not None:
        check_definition(study, definition, spec)
    return study


def check_definition(study, definition, spec):
    """The study's sweep is this one: the same script, space and monitor (the first worker records them)."""
    saved = study.user_attrs.get("sweep")
    if saved is None:
        study.set_user_attr("sweep", definition)
        return
    differ = [f"{key} {saved.get(key)!r} there, {value!r} here" for key, value in definition.items()
              if saved.get(key) != value]
    if differ:
        raise UserError(f"--storage {spec.public}: the study {study.study_name} is another sweep's ({'; '.join(differ)}); "
                        "give this one another --name")


def sampler_maker(params, args):
    """A function of a new trial's slot (its place among the study's parameter sets, sweeps/claims.py)
    to its sampler, seeded with --seed and that slot."""
    import optuna

    def make(slot):
        seed = (args.seed * 1_000_003 + slot) % 2**32
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
