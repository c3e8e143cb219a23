"""Options from a JSON or YAML file (`--config`), validated like flags; and the resolved options
printed back as such a file (`--print_config`).

A file is a mapping of option names (as in config.json: `n_epoch`, not `--n-epoch`) to values.
A run's own config.json is one too: its "options" are read and its "resume" left out, so the
file starts the same experiment in a new run folder. Flags given on the command line override
the file's values.
"""
import argparse
import difflib
import json
from pathlib import Path

from cli.options import options_where, parse_bool
from utils.errors import UserError

SUFFIXES = (".json", ".yaml", ".yml")


def config_file_in(argv):
    """The --config path in `argv`, read before the full parse so the file can set its defaults."""
    from cli.options import Parser
    parser = Parser(add_help=False)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE")
    known, _ = parser.parse_known_args(argv)
    return known.config


def read_config_file(path, parser):
    """The options in `path` as {dest: value}, each checked by the parser's own type and choices."""
    path = Path(path)
    data = _load(path)
    not_in_files = options_where(parser, lambda rules: not rules.in_files)
    if isinstance(data.get("options"), dict) and "environment" in data:  # a run's config.json
        data = {name: value for name, value in data["options"].items() if name not in not_in_files}
    actions = {action.dest: action for action in parser._actions if action.option_strings and action.dest != "help"}
    values = {}
    for name, value in data.items():
        action = actions.get(name)
        if name == "resume":
            raise UserError(f"--config {path}: resume is not an option for a config file; give --resume on the "
                            "command line (a resumed run keeps its checkpoint's options)")
        if action is None or name in not_in_files:
            known = [dest for dest in actions if dest not in not_in_files]
            close = difflib.get_close_matches(str(name), known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"--config {path}: unknown option {name!r}{hint}; a config file holds option names "
                            f"such as n_epoch or lr (see --help)")
        values[name] = _checked(action, value, path)
    return values


def format_options(options, parser, form="yaml"):
    """`options` (a dict of JSON values) of `parser` as the text of a config file."""
    not_in_files = options_where(parser, lambda rules: not rules.in_files)
    options = {name: value for name, value in options.items() if name not in not_in_files}
    if form == "json":
        return json.dumps(options, indent=2) + "\n"
    import yaml
    return yaml.safe_dump(options, sort_keys=False, default_flow_style=None)


def _load(path):
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--config {path}: expected a .json, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UserError(f"--config {path}: not a UTF-8 text file (byte {error.start} is "
                        f"{error.object[error.start]:#04x})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise UserError(f"--config {path}: not valid JSON ({error})") from None
    else:
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise UserError(f"--config {path}: not valid YAML{at} ({getattr(error, 'problem', None) or error})") from None
    check_size(data, f"--config {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def check_size(data, where, limit=10_000):
    """Refuse a file whose values expand past `limit` (YAML aliases can make a few hundred bytes
    expand to billions), counting no further than the limit, so the check itself stays fast."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            raise UserError(f"{where}: expands to more than {limit:,} values; a config file holds options")
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)


def _checked(action, value, path):
    """`value` as the flag `action` would produce it from the command line."""
    where = f"--config {path}: {action.dest}"
    if value is None:
        if action.default is None:
            return None
        raise UserError(f"{where}: expected a value, got null")
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1
    if many:
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise UserError(f"{where}: expected at least one value, got []")
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise UserError(f"{where}: expected {action.nargs} values, got {json.dumps(value)}")
        return [_one(action, item, where) for item in items]
    if isinstance(value, list) and getattr(action.type, "accepts_list", False):
        value = ",".join(map(str, value))
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: expected one value, got {json.dumps(value)}")
    return _one(action, value, where)


def _one(action, value, where):
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: expected a plain value, got {json.dumps(value)}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, bool) and action.type not in (None, str, parse_bool):
        raise UserError(f"{where}: expected {action.metavar or action.type.__name__}, got {json.dumps(value)}")
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        raise UserError(f"{where}: {error}") from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where}: expected one of {', '.join(map(str, action.choices))}, got {json.dumps(value)}")
    return converted
