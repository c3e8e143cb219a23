"""A sweep's search space: which options sweep.py varies, and how.

On the command line, one `NAME=KIND:...` per option; in a YAML/JSON file, a mapping of NAME to the
same text, to a list (a choice), or to {kind, low, high, step, values}:

    lr=loguniform:1e-4:1e-1      a float, uniform in log scale
    dropout=uniform:0:0.5        a float
    n_epoch=int:2:8[:2]          an integer (with a step)
    batch_size=choice:32,64,128  one of the values (numbers, true/false or text)
    batch_size=grid:32,64,128    every value: a grid sweep (then every option must be a grid)
"""
import json
import math
from pathlib import Path

from cli.config_file import check_size
from utils.errors import UserError

KINDS = ("loguniform", "uniform", "int", "choice", "grid")


def plain_value(text):
    """A choice's value from its text: an int, a float, true/false, or the text itself."""
    text = str(text).strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def as_argument(value):
    """A value as the task script's command line takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


class Param:
    def __init__(self, name, kind, low=None, high=None, step=None, values=None):
        self.name, self.kind, self.low, self.high, self.step, self.values = name, kind, low, high, step, values

    def suggest(self, trial):
        """The value an Optuna `trial` draws for this option."""
        if self.kind in ("choice", "grid"):
            return trial.suggest_categorical(self.name, self.values)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")

    def examples(self):
        """The values that must all be valid for the task script: every choice, or both ends."""
        return list(self.values) if self.values is not None else [self.low, self.high]

    def describe(self):
        """The canonical text of this parameter (what sweep.json records)."""
        if self.values is not None:
            return f"{self.kind}:{','.join(map(as_argument, self.values))}"
        return f"{self.kind}:{as_argument(self.low)}:{as_argument(self.high)}" + (f":{self.step}" if self.step else "")


def parse_param(name, spec, where):
    """One option's parameter from `spec` (text, a list, or a mapping); `where` names its source."""
    bad = f"{where}: {name}={spec!r}"
    if isinstance(spec, list):
        spec = {"kind": "choice", "values": spec}
    if isinstance(spec, dict):
        kind = spec.get("kind", spec.get("type"))
        fields = dict(spec)
    else:
        kind, _, rest = str(spec).partition(":")
        parts = rest.split(":")
        if kind in ("choice", "grid"):
            fields = {"values": [plain_value(item) for item in rest.split(",") if item.strip()]}
        else:
            fields = dict(zip(("low", "high", "step"), parts))
    if kind not in KINDS:
        raise UserError(f"{bad}: unknown kind {kind!r}; expected one of {', '.join(KINDS)} (e.g. {name}=uniform:0:1)")
    if kind in ("choice", "grid"):
        values = fields.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{bad}: expected {kind}:A,B,... with at least one value")
        values = [plain_value(value) if isinstance(value, str) else value for value in values]
        if len(set(map(json.dumps, values))) < len(values):
            raise UserError(f"{bad}: a value is repeated")
        return Param(name, kind, values=values)
    number = int if kind == "int" else float
    try:
        low, high = number(fields["low"]), number(fields["high"])
        step = int(fields["step"]) if fields.get("step") not in (None, "") else None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{bad}: expected {kind}:LOW:HIGH" + ("[:STEP]" if kind == "int" else "")
                        + " with numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high or (kind == "loguniform" and low <= 0) \
            or (step is not None and (kind != "int" or step < 1)):
        raise UserError(f"{bad}: expected LOW < HIGH" + (", both > 0" if kind == "loguniform" else "")
                        + (" and an integer STEP >= 1" if step is not None else ""))
    return Param(name, kind, low, high, step)


def parse_space(items):
    """The parameters of --space: NAME=SPEC items, or one YAML/JSON file of them."""
    if len(items) == 1 and "=" not in items[0]:
        path = Path(items[0])
        if not path.is_file():
            raise UserError(f"--space {path}: no such file; expected NAME=KIND:... items or a .yaml/.json file")
        import yaml
        try:
            content = yaml.safe_load(path.read_text())  # JSON is YAML too
        except (OSError, yaml.YAMLError) as error:
            raise UserError(f"--space {path}: not readable YAML/JSON ({str(error).splitlines()[0]})") from None
        check_size(content, f"--space {path}")
        if not isinstance(content, dict) or not content:
            raise UserError(f"--space {path}: expected a mapping of option names to their ranges")
        params = [parse_param(str(name), spec, f"--space {path}") for name, spec in content.items()]
    else:
        params = []
        for item in items:
            name, equals, spec = item.partition("=")
            if not equals or not name:
                raise UserError(f"--space {item!r}: expected NAME=KIND:... (e.g. lr=loguniform:1e-4:1e-1)")
            params.append(parse_param(name.lstrip("-"), spec, "--space"))
    names = [param.name for param in params]
    if len(set(names)) < len(names):
        raise UserError(f"--space names an option twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    grids = [param.kind == "grid" for param in params]
    if any(grids) and not all(grids):
        raise UserError("--space mixes grid: with other kinds; a grid sweep needs every option as grid:A,B,...")
    return params


def grid_size(params):
    """The number of points of an all-grid space, else None."""
    if not params or any(param.kind != "grid" for param in params):
        return None
    return math.prod(len(param.values) for param in params)
