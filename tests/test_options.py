"""Tests for cli/options.py: the command-line parser, flags and explicit options."""
import argparse

import pytest

from cli.options import Parser, add_flag, explicit_options, positive_float


def _parser():
    parser = Parser(prog="train")
    add_flag(parser, "--viz")
    add_flag(parser, "--parallel", default=True)
    parser.add_argument("--learning_rate", type=positive_float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=8)
    group = parser.add_argument_group("task")
    group.add_argument("--dropout", type=float, default=0.2)
    return parser


@pytest.mark.parametrize("argv, expected", [
    ([], False),
    (["--viz"], True),
    (["--viz", "True"], True),
    (["--viz", "true"], True),
    (["--viz", "1"], True),
    (["--viz", "YES"], True),
    (["--viz", "false"], False),
    (["--viz", "False"], False),
    (["--viz", "0"], False),
    (["--viz=off"], False),
    (["--viz", "--batch_size", "3"], True),
])
def test_flags_mean_what_was_written(argv, expected):
    assert _parser().parse_args(argv).viz is expected


def test_flag_false_turns_a_default_on_flag_off():
    assert _parser().parse_args([]).parallel is True
    assert _parser().parse_args(["--parallel", "False"]).parallel is False


def test_bad_flag_value_exits_with_code_2(capsys):
    with pytest.raises(SystemExit) as error:
        _parser().parse_args(["--viz", "maybe"])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "--viz" in err


@pytest.mark.parametrize("text", ["-1", "0", "abc", "nan", "inf", ""])
def test_positive_float_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)


def test_positive_float_accepts_and_parser_rejects_bad_value(capsys):
    assert positive_float("2.5e-3") == 0.0025
    with pytest.raises(SystemExit) as error:
        _parser().parse_args(["--learning_rate", "0"])
    assert error.value.code == 2
    assert "positive" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--learning", "0.1"], ["--batch", "4"]],
                         ids=["unknown", "abbreviation", "abbreviation_of_int"])
def test_parser_refuses_unknown_and_abbreviated_flags(argv, capsys):
    with pytest.raises(SystemExit) as error:
        _parser().parse_args(argv)
    assert error.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_explicit_options_lists_only_what_was_given():
    parser = _parser()
    assert explicit_options(parser, []) == set()
    given = explicit_options(parser, ["--viz", "--batch_size", "8", "--dropout", "0.5"])
    assert given == {"viz", "batch_size", "dropout"}  # given even when equal to the default
    # The parser's defaults are untouched afterwards.
    args = parser.parse_args([])
    assert (args.viz, args.parallel, args.learning_rate, args.batch_size, args.dropout) == (False, True, 0.1, 8, 0.2)


def test_explicit_options_ignores_defaults_set_by_a_task():
    parser = _parser()
    parser.set_defaults(learning_rate=0.001, batch_size=64)
    parser._action_groups[-1].set_defaults(dropout=0.0)
    args = parser.parse_args([])
    assert (args.learning_rate, args.batch_size, args.dropout) == (0.001, 64, 0.0)
    assert explicit_options(parser, []) == set()
    assert explicit_options(parser, ["--viz", "--batch_size", "64"]) == {"viz", "batch_size"}
    assert parser.parse_args([]).batch_size == 64
