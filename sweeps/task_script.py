"""The task script a sweep runs: its trainer, its options parsed as a trial would parse them, and
the search space checked against them before any trial starts."""
import difflib
import importlib.util
import sys
from pathlib import Path

from sweeps.space import as_argument
from utils.errors import UserError


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
        if not actions[name].rules.sweep or actions[name].nargs not in (None, "?"):
            raise UserError(f"--space {name}: this option cannot be swept (it is fixed for a sweep, or takes a list)")
        if name in given:
            raise UserError(f"--space {name} and --{name} after --: an option is either swept or fixed")
        for value in param.examples():
            def fail(message, value=value):
                raise UserError(f"--space {name}={param.describe()}: the task refuses {as_argument(value)} ({message})")
            parser.error = fail
            parser.parse_args([*argv, f"--{name}", as_argument(value)])


def check_constraints(params, parser, argv, metric_names):
    """The checks a training run makes of its options as a whole (cli/arguments.py), made before any
    trial starts for every corner of the space (each range's ends, each choice): a trial that would
    fail at start is refused here, in one line, instead of using up the budget."""
    import itertools

    from cli.arguments import check_training_options
    corners = list(itertools.islice(itertools.product(*(param.examples() for param in params)), 4096))
    for corner in corners:
        values = dict(zip((param.name for param in params), corner))
        args = parser.parse_args([*argv, *(item for name, value in values.items()
                                           for item in (f"--{name}", as_argument(value)))])
        try:
            check_training_options(args, metric_names)
        except UserError as error:
            ranges = ", ".join(f"{param.name}={param.describe()}" for param in params
                               if f"--{param.name} " in f"{error} " or f"--{param.name}:" in str(error))
            raise UserError(f"--space {ranges or ', '.join(f'{p.name}={p.describe()}' for p in params)}: a trial "
                            f"would be refused when it draws {' '.join(f'--{n} {as_argument(v)}' for n, v in values.items())}"
                            f" ({error}); narrow the range or change the fixed option") from None
