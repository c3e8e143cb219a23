"""The sweep's table: a row per trial (its swept values, objective, epochs, test metrics and run
folder, the best marked), printed and written to trials.csv; and a trial's metrics.json."""
import json
from pathlib import Path

from sweeps.space import parse_param
from sweeps.study import read_json_file, storage_for


def read_metrics(folder):
    """A trial's metrics.json as a dict: empty while the run has no folder or no readable file."""
    if folder is None:
        return {}
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


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

    from cli.configcmp import format_table, format_value
    from utils.atomic import atomic_open
    header, rows = trial_table(study, params)
    print(format_table(header, [["-" if value is None else value if isinstance(value, str) else format_value(value)
                                 for value in row] for row in rows]))
    with atomic_open(folder / "trials.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if value is None else value for value in row] for row in rows])
    print(f"\n{folder / 'trials.csv'}; every trial in TensorBoard's HPARAMS tab: tensorboard --logdir {folder}")


def table_of(folder, storage):
    """Show the table of the sweep in `folder` (its study in `storage`, or where sweep.json says)."""
    folder = Path(folder)
    saved = read_json_file(folder / "sweep.json")
    params = [parse_param(name, spec, str(folder / "sweep.json")) for name, spec in saved["space"].items()]
    import optuna
    study = optuna.load_study(study_name=saved["study"], storage=storage_for(storage or saved.get("storage"), folder))
    show_table(study, params, folder)
    return 0
