"""The README's commands, on a machine that has run the quick start (its generated FashionMNIST).

Every ```bash block of the README carries a marker on the line before it:
- `<!-- commands: run -->`: each command runs here as written and succeeds;
- `<!-- commands: check -->`: the commands need the real data or take minutes: their options are
  parsed by the script's own parser (so a typo or a renamed option fails here), and the commands of
  the "On the quick start's generated data:" or "check of the whole path" note after the block run;
- `<!-- commands: not run: WHY -->`: an install, a server, GPUs.
`<timestamp>` and `<ts>` stand for the newest run folder of the project in the path, `<another ts>`
for the one before it; `*` is expanded as the shell would.
"""
import glob
import re
import runpy
import shlex
import shutil
import sys

import pytest

from data.synthetic_fashion_mnist import write_fashion_mnist
from helpers import ROOT

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^(?P<marker>[^\n]*)\n[ \t]*```bash\n(?P<body>.*?)```\n(?=(?P<after>(?:[^\n]*\n){0,4}))", re.M | re.S)
MARKER = re.compile(r"<!-- commands: (run|check|not run: [^>]+) -->")
NOTE = re.compile(r"(?:On the quick start's generated data:|check of the whole path:)(.*?)(?:\n\n|$)", re.S)


def blocks():
    """(marker kind, commands, the commands of the note after the block), in README order."""
    found = []
    for match in BLOCK.finditer(README):
        marker = MARKER.fullmatch(match["marker"].strip())
        assert marker, f"a bash block of the README has no commands marker: {match['body'].splitlines()[0]}"
        note = NOTE.search(match["after"])
        variants = re.findall(r"`(python [^`]+)`", note.group(1)) if note else []
        found.append((marker.group(1), commands(match["body"]), variants))
    return found


def commands(body):
    """The block's command lines: continuations joined, comments and output redirections cut off."""
    lines = body.replace("\\\n", " ").splitlines()
    return [re.split(r"\s>\s", line.split("  #")[0])[0].strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def quick_started(tmp_path_factory):
    """A working folder as the quick start leaves it: the generated FashionMNIST and the example configs."""
    folder = tmp_path_factory.mktemp("quick_started")
    write_fashion_mnist(folder / "Dataset" / "synthetic", n_train=12000, n_test=2000, seed=0)
    shutil.copytree(ROOT / "configs", folder / "configs")
    return folder


def resolved(argv, folder):
    """`argv` with the run-folder placeholders and globs resolved in `folder`."""
    out = []
    for arg in argv:
        for placeholder, rank in (("<another_ts>", -2), ("<timestamp>", -1), ("<ts>", -1)):
            if placeholder in arg:
                project = folder / arg.split(placeholder)[0]
                runs = sorted((path for path in project.glob("*") if path.is_dir()), key=lambda p: p.stat().st_mtime)
                if len(runs) >= -rank:  # else left as written, for the command to fail on
                    arg = arg.replace(f"{arg.split(placeholder)[0]}{placeholder}", str(runs[rank]))
        out.extend(sorted(glob.glob(str(folder / arg))) if "*" in arg else [arg])
    return out


def run_command(command, folder, monkeypatch):
    """Run `python SCRIPT ARGS` or `python -m MODULE ARGS` in this process, as the shell would, in `folder`."""
    argv = resolved(shlex.split(command.replace("<another ts>", "<another_ts>")), folder)
    assert argv[0] == "python", command
    monkeypatch.chdir(folder)
    module = argv[2] if argv[1] == "-m" else None
    monkeypatch.setattr(sys, "argv", [module or argv[1], *argv[(3 if module else 2):]])
    try:
        if module:
            monkeypatch.delitem(sys.modules, module, raising=False)  # run as `python -m` would: freshly
            runpy.run_module(module, run_name="__main__")
        else:
            runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    allowed = (0, 1) if argv[1] == "cli/configcmp.py" else (0,)  # configcmp: 1 says the runs differ
    assert code in allowed, f"{command}: exit {code}"


def parse_command(command, folder, monkeypatch):
    """Check a command's options with its script's parser, without running it."""
    from trainer import TrainerBase
    argv = resolved(shlex.split(command), folder)
    monkeypatch.chdir(folder)
    assert (ROOT / argv[1]).is_file() or argv[1] == "-m", command
    if argv[1] == "sweep.py" and argv[2].endswith(".py"):  # the task script's options come after --
        script, argv = argv[2], ["python", argv[2], *argv[argv.index("--") + 1:]] if "--" in argv else []
        assert (ROOT / script).is_file(), command
    if not argv or not re.fullmatch(r"trainer_\w+\.py", argv[1]):
        return
    namespace = runpy.run_path(str(ROOT / argv[1]))
    trainer = next(value for value in namespace.values() if isinstance(value, type)
                   and issubclass(value, TrainerBase) and value.task_class is not None)
    trainer.parse(argv[2:])


def test_every_block_is_marked_and_runs_or_parses_as_written(quick_started, monkeypatch):
    ran = 0
    for kind, block_commands, variants in blocks():
        if kind == "run":
            for command in block_commands:
                run_command(command, quick_started, monkeypatch)
                ran += 1
        elif kind == "check":
            for command in block_commands:
                if command.startswith("python "):
                    parse_command(command, quick_started, monkeypatch)
            for command in variants:
                run_command(command, quick_started, monkeypatch)
                ran += 1
    assert ran >= 10


def test_ci_runs_the_readme_test_command():
    """CI runs the quick start's test command as the README gives it, not a variant of its own."""
    quick_start = [body for kind, body, _ in blocks() if kind == "not run: the quick start (.ci/run runs it)"]
    assert len(quick_start) == 1 and len(quick_start[0]) == 1, quick_start
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start[0][0] in [line.strip() for line in ci], quick_start[0][0]
