"""utils/errors.py: user errors and interruptions reach the console as one line, not a traceback."""
import pytest

from utils.errors import UserError, run_cli


def _raising(error):
    def main(argv):
        raise error
    return main


def test_a_user_error_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_raising(UserError("--lr -1: expected a positive number")), [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --lr -1: expected a positive number\n"


def test_ctrl_c_outside_training_exits_130_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(_raising(KeyboardInterrupt()), [])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_debug_shows_the_traceback():
    with pytest.raises(UserError):
        run_cli(_raising(UserError("bad")), ["--debug"])
    with pytest.raises(KeyboardInterrupt):
        run_cli(_raising(KeyboardInterrupt()), ["--debug"])
