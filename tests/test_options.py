"""Tests for cli/options.py: the command-line parser, flags and explicit options."""
import argparse

import pytest

from cli.options import (EVALUATION, SHARED, TRAINING, Parser, add_flag, add_option, explicit_options, options_where,
                         positive_float)


def _parser():
    parser = Parser(prog="train")
    add_flag(parser, "--viz", EVALUATION)
    add_flag(parser, "--parallel", SHARED, default=True)
    add_option(parser, "--learning_rate", rules=TRAINING, type=positive_float, default=0.1)
    add_option(parser, "--batch_size", rules=SHARED, type=int, default=8)
    group = parser.add_argument_group("task")
    add_option(group, "--dropout", rules=TRAINING, type=float, default=0.2)
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


def _scripts():
    from eval_regression import RegressionEvaluator
    from eval_seg_on_carvana import SegOnCarvanaEvaluator
    from eval_vanilla import VanillaEvaluator
    from trainer_regression import RegressionTrainer
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    from trainer_vanilla import VanillaTrainer
    return [VanillaTrainer, SegOnCarvanaTrainer, RegressionTrainer, VanillaEvaluator, SegOnCarvanaEvaluator,
            RegressionEvaluator]


@pytest.mark.parametrize("script", _scripts(), ids=lambda script: script.__name__)
def test_every_option_of_every_script_is_declared_with_its_rules(script):
    parser = script.build_parser()
    options = [action for action in parser._actions if action.dest != "help"]
    assert options and all(hasattr(action, "rules") for action in options)


def test_an_option_without_rules_or_a_default_of_no_option_is_a_mistake_the_parser_names():
    from cli.arguments import task_parser
    from trainer_vanilla import VanillaTask

    class Undeclared(VanillaTask):
        @classmethod
        def add_arguments(cls, parser):
            super().add_arguments(parser)
            parser.add_argument("--width", type=int, default=4)

    class MisspelledDefault(VanillaTask):
        @classmethod
        def add_arguments(cls, parser):
            super().add_arguments(parser)
            parser.set_defaults(n_epochs=3)

    with pytest.raises(TypeError, match="width"):
        task_parser(Undeclared)
    with pytest.raises(TypeError, match="n_epochs"):
        task_parser(MisspelledDefault)


def test_the_lists_of_options_are_derived_from_their_rules():
    """What a resume may change, what the evaluator refuses, what a sweep or a config file may not
    set: each list is read off the declarations, so a task's own option lands in the right ones."""
    from cli.arguments import resume_safe_options
    from trainer_seg_on_carvana import SegOnCarvanaTrainer
    parser = SegOnCarvanaTrainer.build_parser()
    assert {"cache", "cache_dir", "data_dir", "n_epoch"} <= resume_safe_options(parser, {"lr_scheduler": "none"})
    assert "n_epoch" not in resume_safe_options(parser, {"lr_scheduler": "cosine"})  # the schedule spans n_epoch
    assert {"base_width", "loss", "lr", "monitor"} <= options_where(parser, lambda rules: rules.training)
    assert options_where(parser, lambda rules: rules.split) == {"seed", "data_type", "val_ratio", "test_ratio",
                                                                "train_val_sample_rate", "test_sample_rate"}
    assert options_where(parser, lambda rules: not rules.in_files) == {"config", "print_config", "resume"}
    assert {"monitor", "resume", "output_dir"} <= options_where(parser, lambda rules: not rules.sweep)
    assert not {"lr", "base_width", "batch_size"} & options_where(parser, lambda rules: not rules.sweep)
