"""The global batch: G = batch_size x processes x accum_steps samples per optimizer step.

The data order is a function of the seed, the epoch and G (data/loader.py), so a run that keeps G
takes the same samples at every step on any number of processes. With --global_batch_size, one of
--batch_size / --accum_steps follows from the other once the number of processes is known; a resume
keeps the checkpoint's G, so a run saved on N processes resumes on M with the accumulation (or the
per-process batch) that keeps it.
"""
import os

from cli.options import explicit_options
from utils.errors import UserError


def mark_following_option(parser, argv, args, saved_global=None):
    """With a global batch to keep (--global_batch_size, or `saved_global`, a resumed checkpoint's), derive
    the one of batch_size / accum_steps that `argv` does not give for the processes this command runs
    on (WORLD_SIZE, which torchrun sets), so that the options are whole from the start
    (--print_config); both given: both kept, and checked."""
    if saved_global is not None:
        given_global = "global_batch_size" in explicit_options(parser, argv)
        if given_global and args.global_batch_size != saved_global:
            raise UserError(f"--global_batch_size {args.global_batch_size}: the checkpoint's global batch is "
                            f"{saved_global}, and a resume that changes it changes the experiment; leave "
                            "--global_batch_size out (it is kept) or start a new run")
        args.global_batch_size = saved_global
    if args.global_batch_size is None:
        return
    given = explicit_options(parser, argv)
    if "accum_steps" in given and "batch_size" not in given:
        args.batch_size = None
    elif "accum_steps" not in given:
        args.accum_steps = None
    resolve_global_batch(args, int(os.environ.get("WORLD_SIZE", "1")))


def resolve_global_batch(args, world_size):
    """Fill in the option that follows from --global_batch_size on `world_size` processes (None: it
    follows); a one-line error when it does not divide, naming what would."""
    total = args.global_batch_size
    if total is None:
        return
    if args.batch_size is None:
        args.batch_size = _quotient(total, world_size * args.accum_steps,
                                    f"--accum_steps {args.accum_steps}", "--accum_steps", world_size)
    elif args.accum_steps is None:
        args.accum_steps = _quotient(total, world_size * args.batch_size,
                                     f"--batch_size {args.batch_size}", "--batch_size", world_size)
    elif args.batch_size * world_size * args.accum_steps != total:
        raise UserError(f"the global batch is {total} samples per step (--global_batch_size, or a resumed "
                        f"checkpoint's) and --batch_size {args.batch_size} x {world_size} process(es) x --accum_steps "
                        f"{args.accum_steps} = {args.batch_size * world_size * args.accum_steps}; give one of "
                        "--batch_size / --accum_steps, and the other follows")


def _quotient(total, divisor, given, name, world_size):
    quotient, rest = divmod(total, divisor)
    if rest or not quotient:
        fits = [value for value in range(1, total // world_size + 1) if (total // world_size) % value == 0] \
            if total % world_size == 0 else []
        hint = f"{name} one of {', '.join(map(str, fits[:8]))}" if fits else \
            f"a number of processes that divides {total}"
        raise UserError(f"--global_batch_size {total} on {world_size} process(es) with {given}: {total} is not a "
                        f"multiple of {divisor}; give {hint}")
    return quotient

