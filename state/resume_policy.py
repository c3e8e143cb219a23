"""Which run `--resume auto` continues, so that a requeued or restarted job finds its own run.

    --run_name NAME    the run's folder is `<output_dir>/NAME`: a requeued job that repeats its command
                       line finds it. With `--resume auto` that folder is continued when it holds a
                       resumable checkpoint, a new run starts in it when it holds none, and a folder
                       whose run is finished or whose checkpoint does not load is refused (a new run
                       there would overwrite it).
    no --run_name      the newest resumable run of the same task in the output folder, among runs
                       without a run name whose options agree with those given; a new run when none.

A run is resumable when its `last` checkpoint loads, was written by this task, and its test has not
run. Under torchrun, a restarted worker group (`TORCHELASTIC_RESTART_COUNT` > 0) resumes as if
`--resume auto` were given; one given `--resume PATH` of an older state, which the first attempt
continued in a branch (state/branch.py), continues that branch.
"""
import json
import os
from pathlib import Path

from utils.errors import UserError
from utils.logger import setup_logger

AUTO = "auto"


def elastic_restart():
    """True in a worker group that torchrun restarted after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def output_folder(args):
    return Path(args.output_dir or Path("Results") / args.proj_name)


def wants_auto(args):
    """Whether this command continues its run by itself: `--resume auto`, or a torchrun restart."""
    return (args.resume is not None and str(args.resume) == AUTO) or (args.resume is None and elastic_restart())


def auto_resume(args, task, agrees):
    """The checkpoint `--resume auto` continues, or None for a new run; `agrees(checkpoint)` says whether a
    run's checkpoint is one this command would resume (another experiment's run is never picked)."""
    if args.run_name:
        check_run_name(args.run_name)
        path = named_run_checkpoint(output_folder(args) / args.run_name, task)
    else:
        path = newest_resumable(output_folder(args), task, agrees)
    say = setup_logger().info if os.environ.get("RANK", "0") == "0" else (lambda message: None)
    say(f"--resume auto: continuing {path}" if path else
        f"--resume auto: no resumable run of the {task} task in {output_folder(args)}; starting a new run")
    return path


def restarted_branch(args, task, agrees):
    """The checkpoint to resume with `--resume PATH`: PATH, except in a worker group that torchrun restarted
    when PATH is an older state of its run (state/branch.py): then the branch that an earlier attempt of the
    same launch made from PATH and saved in (the newest, if several), when its checkpoint `agrees` with the
    command, so that the restarted group continues it instead of branching from PATH again."""
    from state.checkpoint import find_checkpoint
    from utils.distributed import launch
    if not elastic_restart() or args.resume is None or str(args.resume) == AUTO:
        return args.resume
    given = find_checkpoint(args.resume).resolve()
    branches = []
    for config in given.parent.parent.glob("*_from_epoch*/config.json"):
        try:
            first = (json.loads(config.read_text()).get("resumes") or [{}])[0]
        except (OSError, ValueError):  # a folder being written, or not a run's
            continue
        if Path(first.get("from", "")).resolve() != given or first.get("launch") != launch():
            continue
        try:
            path, checkpoint = resumable(config.parent, task)
        except UserError:
            continue
        if agrees(checkpoint):
            branches.append(path)
    if not branches:
        return args.resume
    newest = max(branches, key=lambda path: path.stat().st_mtime)
    if os.environ.get("RANK", "0") == "0":
        setup_logger().info(f"torchrun restart: continuing {newest}, the branch an earlier attempt made from {given}")
    return newest


def checkpoint_in(folder):
    found = sorted(Path(folder).glob("*_last_ckpt.pth"))
    return found[0] if len(found) == 1 else None


def resumable(folder, task):
    """(checkpoint path, the checkpoint) of a run that `--resume auto` may continue; a UserError saying why not."""
    from state.checkpoint import read_checkpoint
    from state.run_folder import RunFolder
    path = checkpoint_in(folder)
    if path is None:
        raise UserError(f"run {folder} holds no *_last_ckpt.pth checkpoint")
    checkpoint = read_checkpoint(path, task)
    if "test" in (RunFolder(folder, checkpoint["model_type"], writes=False).read_json("metrics.json") or {}):
        raise UserError(f"run {folder} is finished (trained and tested)")
    return path, checkpoint


def named_run_checkpoint(folder, task):
    """The checkpoint of the run named `folder`, None when it holds no run yet; refused when its run cannot
    be continued, since a new run in its folder would overwrite it."""
    if checkpoint_in(folder) is None and not (folder / "metrics.json").exists():
        return None
    try:
        return resumable(folder, task)[0]
    except UserError as error:
        raise UserError(f"--resume auto --run_name {folder.name}: {error}; nothing to continue, and a new run "
                        "would overwrite it: choose another --run_name") from None


def newest_resumable(output, task, agrees):
    """The newest resumable checkpoint of a run without a run name whose options `agrees` with, or None."""
    if not output.is_dir():
        return None
    candidates = sorted((path for path in output.glob("*/*_last_ckpt.pth")), key=lambda path: path.stat().st_mtime,
                        reverse=True)
    for candidate in candidates:
        try:
            path, checkpoint = resumable(candidate.parent, task)
        except UserError:
            continue
        if not checkpoint["config"].get("run_name") and agrees(checkpoint):
            return path
    return None


def check_same_resume(path):
    """Every process resumes the same checkpoint `path` (or none): each chose it on its own, and a shared
    filesystem that caches file times (NFS) could let two choose differently (a collective under DDP)."""
    from utils import distributed
    chosen = sorted({str(choice) for choice in distributed.all_gather_object(str(path) if path else None)})
    if len(chosen) > 1:
        raise UserError(f"the processes chose different checkpoints to resume: {', '.join(chosen)}; give "
                        "--resume PATH or --run_name NAME")


def check_new_named_run(args):
    """A new run named --run_name refuses a folder that holds a run already (without --resume auto)."""
    if not args.run_name:
        return
    check_run_name(args.run_name)
    folder = output_folder(args) / args.run_name
    if checkpoint_in(folder) is not None or (folder / "metrics.json").exists():
        raise UserError(f"--run_name {args.run_name}: {folder} holds a run already; continue it with --resume auto, "
                        "or choose another --run_name")


def check_run_name(name):
    if not name or "/" in name or name in (".", ".."):
        raise UserError(f"--run_name {name!r}: expected a folder name, without '/'")
