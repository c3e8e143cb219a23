"""The command line's building blocks: a parser with one-line errors, options declared with their
rules, real booleans, validated numbers, and which options a command line gives explicitly.

Every option is declared once, with its `Rules` (`add_option`, `add_flag`): whether a resume may
change it, whether only training uses it, whether it defines the split, whether a sweep may vary it
and whether a config file may set it. Every list the code needs is derived from those declarations
(`options_where`), so an option cannot be missing from one of them.
"""
import argparse
import dataclasses
import difflib
import sys


@dataclasses.dataclass(frozen=True)
class Rules:
    """What may be done with an option."""

    resume: bool = False  # a resumed run may change it: it does not change what the run computes
    training: bool = False  # only training uses it: the evaluator takes the checkpoint's value and refuses it
    split: bool = False  # it defines the split: the evaluator reads the run's split.json and refuses it
    sweep: bool = True  # sweep.py may vary it
    in_files: bool = True  # a config file may set it

    def but(self, **changes):
        return dataclasses.replace(self, **changes)


TRAINING = Rules(training=True)  # what training computes (model, optimizer, schedule): fixed for a run
TRAINING_RESUMABLE = Rules(training=True, resume=True)  # training's bookkeeping (logging, saving, epochs)
SPLIT = Rules(split=True)  # which samples train, validate and test
PLACE = Rules(resume=True)  # where data lives and how fast it runs: any run or evaluation may change it
SHARED = Rules()  # what training and evaluation both compute with (batch size, precision): fixed for a run
EVALUATION = Rules(sweep=False)  # the evaluator's own


def add_option(group, *names, rules, **kwargs):
    """`group.add_argument(*names, **kwargs)` for an option with its `rules`."""
    action = group.add_argument(*names, **kwargs)
    action.rules = rules
    return action


def options_where(parser, rule):
    """The names (dests) of the parser's options whose rules satisfy `rule(rules)`."""
    return {action.dest for action in parser._actions if hasattr(action, "rules") and rule(action.rules)}


def undeclared_options(parser):
    """Options without rules, and defaults set for options that do not exist: both are mistakes."""
    without_rules = {action.dest for action in parser._actions if action.dest != "help" and not hasattr(action, "rules")}
    of_no_option = set(parser._defaults) - {action.dest for action in parser._actions}
    return sorted(without_rules | of_no_option)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not when the help text already says it, nor when there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad option in one line, suggests the nearest valid ones,
    and never guesses abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(self.unrecognized(unknown))
        return parsed

    def unrecognized(self, unknown):
        """The error for arguments no option takes, with the nearest options for each mistyped one."""
        options = [option for action in self._actions if action.help != argparse.SUPPRESS
                   for option in action.option_strings if option.startswith("--")]
        hints = []
        for token in unknown:
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, options, n=3, cutoff=0.75) if name.startswith("-") else []
            if close:
                hints.append(f"{name}: did you mean {' or '.join(close)}?")
        return f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_flag(group, name, rules, default=False, help=""):
    """`--name` alone turns it on; `--name true|false` (any case, also 1/0, yes/no) sets it."""
    return add_option(group, name, rules=rules, nargs="?", const=True, default=default, type=parse_bool,
                      metavar="BOOL", help=help)


def _number(kind, text, check, expected):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value != value or not check(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


INT_LIMIT = 2 ** 63  # what torch and NumPy count in


def positive_int(text):
    return _number(int, text, lambda v: 0 < v < INT_LIMIT, "a positive integer below 2^63")


def non_negative_int(text):
    return _number(int, text, lambda v: 0 <= v < INT_LIMIT, "an integer >= 0 and below 2^63")


def seed(text):
    return _number(int, text, lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2^32), the range NumPy seeds take")


def positive_float(text):
    return _number(float, text, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text):
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a number >= 0")


def fraction(text):
    return _number(float, text, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def ratio(text):
    return _number(float, text, lambda v: 0 <= v < 1, "a ratio in [0, 1)")


def unit_interval(text):
    return _number(float, text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def explicit_options(parser, argv):
    """Names of the options that `argv` sets explicitly (as opposed to left at their defaults)."""
    saved = {action.dest: action.default for action in parser._actions}
    saved_parser_defaults = parser._defaults  # what set_defaults() added; parse_args would copy them in
    try:
        parser._defaults = {}
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        given = parser.parse_args(argv)
    finally:
        parser._defaults = saved_parser_defaults
        for action in parser._actions:
            action.default = saved[action.dest]
    return set(vars(given))
