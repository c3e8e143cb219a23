"""Errors that are the user's to fix, and the command-line wrapper that reports them.

A `UserError` is printed as one line (``error: <message>``) and exits with code 2: no traceback
for a mistake in an option, a path or a data folder. Ctrl+C that reaches the top (before training
starts, or pressed twice) exits with 130. `--debug` shows the traceback anyway.
Anything else is a bug and propagates with its traceback.
"""
import sys


class UserError(Exception):
    """A problem the user can fix: a bad option, a missing or malformed file."""


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


_tracebacks = {"shown": False}  # --debug: user errors show their traceback


def show_tracebacks(shown):
    """Set once the options are parsed, so that `debug: true` in a config file counts as --debug does."""
    _tracebacks["shown"] = bool(shown)


def run_cli(main, argv=None):
    """Call ``main(argv)`` and turn a `UserError` into one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    show_tracebacks("--debug" in argv)  # until the options are parsed
    try:
        return main(argv)
    except UserError as error:
        if _tracebacks["shown"]:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl+C before training started, or twice: nothing was left to save
        if _tracebacks["shown"]:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def import_optional(module, package, purpose):
    """Import an optional back end, or raise a one-line `UserError` with the pip command."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UserError(f"{purpose} needs the {package} package, not installed here ({error}): "
                        f"pip install {package}") from None
