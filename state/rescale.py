"""A checkpoint written by N processes, laid out for a resume on M.

The data order depends on the seed, the epoch and the global batch alone (data/loader.py), and the
checkpoint records where the epoch stands as samples of that order (`epoch_samples`): a resume
that keeps the global batch continues at the same sample on any number of processes
(cli/global_batch.py derives the per-process batch or the accumulation that keeps it).

What is per process is laid out anew when M differs from N: the epoch's partial metric sums are
added up on rank 0 (their reduction over the processes is the same sum), and the random streams of
the processes (dropout) are the saved ones for the ranks both runs have, and streams derived from
the seed, the rank and the global step for the others.
"""
from utils.errors import UserError
from utils.seed import derived_seed, get_rng_state, seed_process_streams, set_rng_state


def rescale(checkpoint, args, world_size, log=None):
    """Lay `checkpoint` (in this version's format) out for `world_size` processes running with `args`;
    refuse one whose global batch differs."""
    saved_world, total = checkpoint["world_size"], checkpoint["global_batch"]
    if args.batch_size * world_size * args.accum_steps != total:
        raise UserError(f"--resume {args.resume}: its global batch is {total} samples per step and this run's is "
                        f"{args.batch_size * world_size * args.accum_steps} (--batch_size {args.batch_size} x "
                        f"{world_size} process(es) x --accum_steps {args.accum_steps}); give --global_batch_size "
                        f"{total} and one of --batch_size / --accum_steps, or start a new run")
    saved = checkpoint["config"]
    if (saved_world, saved["batch_size"], saved["accum_steps"]) == (world_size, args.batch_size, args.accum_steps):
        return checkpoint
    # Micro-batches of the new split; past the epoch's end when its last step was taken, which skips it.
    checkpoint["batches_done"] = checkpoint["epoch_samples"] // total * args.accum_steps
    if saved_world == world_size:
        return checkpoint
    checkpoint["epoch_sums"] = [added_sums(checkpoint["epoch_sums"])] + [empty_sums()] * (world_size - 1)
    checkpoint["rng"] = [checkpoint["rng"][rank] if rank < saved_world else
                         derived_stream(args.seed, rank, checkpoint["global_step"]) for rank in range(world_size)]
    checkpoint["world_size"] = world_size
    if log is not None:
        log.info(f"resuming on {world_size} process(es) a state saved by {saved_world}: the same samples at "
                 f"every step (global batch {total}); dropout draws differ from an uninterrupted run")
    return checkpoint


def empty_sums():
    return {"sums": {}, "counts": {}}


def added_sums(states):
    """The MetricSums states of several processes added into one."""
    total = empty_sums()
    for state in states:
        for name, value in state["sums"].items():
            total["sums"][name] = total["sums"][name] + value if name in total["sums"] else value.clone()
        for name, value in state["counts"].items():
            total["counts"][name] = total["counts"].get(name, 0) + value
    return total


def derived_stream(seed, rank, global_step):
    """The random state a process of `rank` starts from on a resume at `global_step` that has no saved one,
    leaving this process's own state as it was."""
    saved = get_rng_state()
    seed_process_streams(derived_seed(seed, global_step), rank)
    state = get_rng_state()
    set_rng_state(saved)
    return state
