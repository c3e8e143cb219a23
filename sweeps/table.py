"""The sweep's table: a row per trial (its swept values, objective, epochs, test metrics, run folder,
the worker that ran it and the trial it retries, the best marked), printed and written to trials.csv
with the parameters' importances and the plots beside it (sweeps/plots.py); and a trial's metrics.json."""
import json
from pathlib import Path

from sweeps.space import parse_param
from sweeps.storage import open_storage, storage_spec
from sweeps.study import read_json_file


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
    """(header, rows of plain values) of every trial: number, state ("retried" for a trial failed with
    its worker and queued again), swept values, the objective, epochs, test metrics, run folder, the
    worker's host and the trial retried; the best trial marked with *. Slots queued for a larger
    --n_trials (no values yet) are left out."""
    from optuna.trial import TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING or t.params]
    try:
        best = study.best_trial.number
    except ValueError:  # no trial completed yet
        best = None
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    metrics = {t.number: read_metrics(t.user_attrs["run_folder"]) if "run_folder" in t.user_attrs else {}
               for t in trials}
    monitor = next((m["monitor"] for m in metrics.values() if "monitor" in m), "objective")
    tests = list(dict.fromkeys(name for m in metrics.values() for name in (m.get("test") or {})))
    header = ["best", "trial", "state", *(param.name for param in params), f"best {monitor}", "epochs", *tests, "run",
              "worker", "retry of"]
    rows = []
    for t in trials:
        m = metrics[t.number]
        value = t.value if t.state == TrialState.COMPLETE else m.get("best_value")
        state = "retried" if t.number in retried and t.state == TrialState.FAIL else t.state.name.lower()
        rows.append(["*" if t.number == best else "", t.number, state,
                     *(t.params.get(param.name) for param in params), value, m.get("epochs_done"),
                     *((m.get("test") or {}).get(name) for name in tests),
                     Path(t.user_attrs["run_folder"]).name if "run_folder" in t.user_attrs else None,
                     t.user_attrs.get("worker", ":").partition(":")[0] or None, t.system_attrs.get("failed_trial")])
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


def show_analysis(study, params, folder):
    """The parameters' importances, printed, and the plots written beside trials.csv."""
    from sweeps.plots import importances, write_plots
    found, why = importances(study, params)
    if found:
        print("importance of the parameters (Optuna's default evaluator): "
              + "  ".join(f"{name} {value:.3f}" for name, value in found.items()))
    else:
        print(f"no importances: {why}")
    written = write_plots(study, params, found, folder)
    print("plots: " + ", ".join(str(path) for path in written) + " (an interactive view: optuna-dashboard)")


def table_of(folder, storage):
    """Show the table of the sweep in `folder` (its study in `storage`, or where sweep.json says), its
    parameters' importances, and write the plots."""
    folder = Path(folder)
    saved = read_json_file(folder / "sweep.json")
    params = [parse_param(name, spec, str(folder / "sweep.json")) for name, spec in saved["space"].items()]
    import optuna
    spec = storage_spec(storage or saved.get("storage"), folder)
    study = optuna.load_study(study_name=saved["study"], storage=open_storage(spec))
    show_table(study, params, folder)
    show_analysis(study, params, folder)
    return 0
