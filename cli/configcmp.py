"""Compare the options and results of saved training runs.

Usage, from the repository root:
    python cli/configcmp.py Results/Vanilla/RUN_A Results/Vanilla/RUN_B
    python cli/configcmp.py RUN_A/config.json RUN_B/config.json
    python cli/configcmp.py Results/Vanilla/*

Each argument is a run folder or its config.json (metrics.json beside it is read when present).
Two runs: the options that differ or only one run has, best and test metrics, and how the
environments differ (for information). More runs: one table, a row per run and a column per
option that varies; arguments that are not runs are skipped with a warning, as a glob may catch
a stray file.
Options compare as JSON values (0.1 equals 0.10, true is not 1, lists compare whole). Options that
say where a run lives rather than what it computes (--config, --output_dir, --proj_name, --resume,
--print_config) are shown but not compared: a run and its resume, or a run repeated from its
config.json into another folder, match.
Exit code, like diff: 0 when the options match, 1 when they differ, 2 on an error.
"""
import argparse
import json
import sys
from pathlib import Path

MISSING = object()  # stands for an option a run does not have; printed as "-"
# Keys that differ between any two runs, or only repeat the option differences.
ENVIRONMENT_SKIPPED = {"started_at", "finished_at", "command"}
# Options naming where a run lives and how it was started, not what it computes: not compared.
WHERE_OPTIONS = ("config", "output_dir", "proj_name", "resume", "print_config")
TABLE_CELL_WIDTH = 32  # longer option values are cut in the many-run table to keep rows readable


class RunError(Exception):
    """A path that is not a readable run; the message names the path and what was expected."""


def _read_json(path, expected):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: not readable JSON ({error}); expected {expected}") from None


def load_run(path):
    """Read a run from its folder or config.json, or raise `RunError`. Returns a dict with `name`
    (the run folder's name), `path`, `options`, `environment` and `metrics` ({} if unreadable)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: does not exist; expected a run folder or its config.json")
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise RunError(f"{path}: has no config.json; expected a run folder")
    config = _read_json(config_path, "a run's config.json")
    if not isinstance(config, dict) or not isinstance(config.get("options"), dict):
        raise RunError(f'{config_path}: expected a JSON object with an "options" object')
    metrics, metrics_path = {}, config_path.with_name("metrics.json")
    if metrics_path.is_file():
        try:
            metrics = _read_json(metrics_path, "a run's metrics.json")
        except RunError as error:  # a run killed while writing it still has a config to compare
            print(f"warning: {error}; showing no metrics for this run", file=sys.stderr)
    environment, model = config.get("environment"), config.get("model")
    return {"name": config_path.resolve().parent.name, "path": path, "options": config["options"],
            "environment": environment if isinstance(environment, dict) else {},
            "model": model if isinstance(model, dict) else {},
            "metrics": metrics if isinstance(metrics, dict) else {}}


def _canonical(value):
    """A hashable key under which equal JSON values are equal: 1 equals 1.0, true is not 1."""
    if isinstance(value, list):
        return ("list", tuple(map(_canonical, value)))
    if isinstance(value, dict):
        return ("object", tuple(sorted((key, _canonical(item)) for key, item in value.items())))
    return (isinstance(value, bool), value)


def _varying(mappings):
    names = dict.fromkeys(name for mapping in mappings for name in mapping)
    columns = {name: [mapping.get(name, MISSING) for mapping in mappings] for name in names}
    return {name: values for name, values in columns.items()
            if len(set(map(_canonical, values))) > 1}


def compare(runs):
    """The options that vary across `runs` (from `load_run`): name -> value in each run, in
    first-seen order, `MISSING` where a run lacks it. Empty when all options match."""
    return _varying([experiment_options(run) for run in runs])


def experiment_options(run):
    """The run's options without those that only say where it lives (WHERE_OPTIONS)."""
    return {name: value for name, value in run["options"].items() if name not in WHERE_OPTIONS}


def _where(runs):
    """The WHERE_OPTIONS that vary across `runs`, like `compare`'s result."""
    return _varying([{name: run["options"].get(name, MISSING) for name in WHERE_OPTIONS} for run in runs])


def format_value(value):
    if value is MISSING:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(format_value, value)) + "]"
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)


def format_table(header, rows):
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
             for row in [header, *rows])
    return "\n".join("  " + line.rstrip() for line in lines)


def _results(runs):
    """Header and one row per run for the status, best value and test metrics."""
    metrics = [run["metrics"] for run in runs]
    tests = [m.get("test") if isinstance(m.get("test"), dict) else {} for m in metrics]
    test_names = list(dict.fromkeys(name for test in tests for name in test))
    monitors = {m["monitor"] for m in metrics if "monitor" in m}  # a run with no metrics has none
    shared = len(monitors) == 1
    header = ["status"] + ([f"best {monitors.pop()}"] if shared else ["monitor", "best"])
    header += ["epoch", *test_names]
    sized = any("parameters" in run.get("model", {}) for run in runs)  # runs before the summary have none
    header += ["parameters"] if sized else []
    rows = []
    for run, m, test in zip(runs, metrics, tests):
        row = [m.get("status", MISSING)] + ([] if shared else [m.get("monitor", MISSING)])
        row += [m.get("best_value", MISSING), m.get("best_epoch", MISSING)]
        row += [test.get(name, MISSING) for name in test_names]
        row += [run.get("model", {}).get("parameters", MISSING)] if sized else []
        rows.append([format_value(value) for value in row])
    return header, rows


def _print_pair(a, b):
    varying = compare([a, b])
    print(f"A: {a['path']}\nB: {b['path']}\n")
    differ = [[name, format_value(va), format_value(vb)] for name, (va, vb) in varying.items()
              if va is not MISSING and vb is not MISSING]
    if differ:
        print(f"Options that differ ({len(differ)}):\n{format_table(['option', 'A', 'B'], differ)}")
    for label, index in ("A", 0), ("B", 1):
        only = [f"  {name} = {format_value(values[index])}" for name, values in varying.items()
                if values[1 - index] is MISSING]
        if only:
            print(f"Only in {label} ({len(only)}):", *only, sep="\n")
    if not varying:
        print(f"Options match ({len(experiment_options(a))} options).")
    where = [[name, format_value(va), format_value(vb)] for name, (va, vb) in _where([a, b]).items()]
    if where:
        print(f"\nWhere the runs live (not compared):\n{format_table(['option', 'A', 'B'], where)}")
    header, rows = _results([a, b])
    print(f"\nResults:\n{format_table(['run', *header], [['A', *rows[0]], ['B', *rows[1]]])}")
    environment = [[key, format_value(va), format_value(vb)] for key, (va, vb)
                   in _varying([a["environment"], b["environment"]]).items()
                   if key not in ENVIRONMENT_SKIPPED]
    if environment:
        print("\nEnvironment differences (for information):")
        print(format_table(["key", "A", "B"], environment))


def _clip(text):
    return text if len(text) <= TABLE_CELL_WIDTH else text[:TABLE_CELL_WIDTH - 3] + "..."


def _print_table(runs):
    varying = compare(runs)
    labels = [run["name"] for run in runs]
    if len(set(labels)) < len(labels):  # same folder name under different projects
        labels = [str(run["path"]) for run in runs]
    header, results = _results(runs)
    rows = [[label] + [_clip(format_value(values[index])) for values in varying.values()] + results[index]
            for index, label in enumerate(labels)]
    print(format_table(["run", *varying, *header], rows))
    if not varying:
        print(f"\nOptions match across all {len(runs)} runs.")


def _load_many(paths):
    runs = []
    for path in paths:
        try:
            runs.append(load_run(path))
        except RunError as error:
            print(f"warning: skipping {error}", file=sys.stderr)
    if len(runs) < 2:
        raise RunError(f"only {len(runs)} of the {len(paths)} arguments is a run; "
                       "expected at least two run folders")
    return runs


def main(argv=None):
    """Compare the runs named in `argv`; return 0 if their options match, 1 if not, 2 on error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="Exit code: 0 options match, 1 they differ, 2 error.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a run folder or its config.json")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs to compare")
    pair = len(args.runs) == 2
    try:
        runs = [load_run(path) for path in args.runs] if pair else _load_many(args.runs)
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if pair:
        _print_pair(*runs)
    else:
        _print_table(runs)
    return 1 if compare(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
