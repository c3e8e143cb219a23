"""Processes launched by torchrun: the process group, ranks and devices, from one place."""
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from utils.errors import UserError


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch():
    """What tells one torchrun launch from another, alike on its every process and restart, or None
    outside torchrun: the rendezvous id (`--rdzv_id`, a uuid with --standalone); for the static
    rendezvous's default id, "none", on one node also the torchrun agent's host and process."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None or run_id != "none" or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return run_id
    import socket
    return f"none@{socket.gethostname()}:{os.getppid()}"


def init_distributed(use_cuda):
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPU); return (rank, world_size, local_rank)."""
    die_with_torchrun()
    if not launched_by_torchrun():
        return 0, 1, 0
    if not dist.is_initialized():
        backend, store = "nccl" if use_cuda else "gloo", restart_keyed_store()
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def die_with_torchrun():
    """Under torchrun on Linux, have the kernel SIGKILL this worker when torchrun ends. torchrun stops its
    workers when it is stopped, but killed itself (`kill -9`, a scheduler's kill of its process alone), it
    would leave them training on, orphans that hold the run's lock and write into it while the job is
    started again. Killed with it, a worker leaves the run as of its last save, which the next start resumes."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    torchrun = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != torchrun:  # torchrun ended before the call
        os.kill(os.getpid(), signal.SIGKILL)


def restart_keyed_store():
    """Under torchrun's elastic agent, the process group's store with keys of this attempt alone, else None.

    The agent keeps its store across the restarts of a worker group (`--max-restarts`), and the
    workers of a restarted group can read the addresses the previous attempt left there (connection
    refused, or a hang); keyed by TORCHELASTIC_RESTART_COUNT, each attempt meets only its own."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    from torch.distributed.constants import default_pg_timeout
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=not agent_serves and os.environ["RANK"] == "0", timeout=default_pg_timeout,
                          multi_tenant=not agent_serves)
    return dist.PrefixStore(f"torch-template/attempt-{attempt}", store)


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def broadcast_object(obj, src=0):
    """Rank `src`'s value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def mean_over_ranks(value, device):
    """The mean over the ranks of the scalar tensor `value`, as a float (a collective under DDP)."""
    if is_distributed():
        value = value.detach().to(device, torch.float64).clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def any_rank(flag, device):
    """True on every rank when `flag` is True on at least one (a collective: call it on all ranks)."""
    if not is_distributed():
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_buffers(module, src=0):
    """Rank `src`'s buffers (BatchNorm statistics) in `module` on every rank. DDP sends them at the
    start of each training forward; after the last one each rank has updated its own."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup(wait=False):
    """Leave the process group; with `wait` (a run that ended well), once every rank is here: a rank
    that leaves while another still closes its files can be aborted at exit."""
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def resolve_device(gpu_devices, local_rank=0):
    """The torch.device for this process.

    `gpu_devices` None: the first visible GPU (one per local rank under torchrun), else the CPU.
    `["cpu"]`: the CPU. A list of ids: those GPUs (this process takes the one at its local rank).
    """
    if gpu_devices and [str(d).lower() for d in gpu_devices] == ["cpu"]:
        return torch.device("cpu")
    if gpu_devices is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        ids = [int(d) for d in gpu_devices]
    except ValueError:
        raise UserError(f"--gpu_devices {' '.join(map(str, gpu_devices))}: expected GPU ids like '0 1' or 'cpu'") from None
    if not torch.cuda.is_available():
        raise UserError(f"--gpu_devices {' '.join(map(str, ids))} asks for GPUs but CUDA is not available here; "
                        "leave it out (uses the CPU) or pass --gpu_devices cpu")
    count = torch.cuda.device_count()
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise UserError(f"--gpu_devices {bad[0]} does not exist; this machine has GPUs 0..{count - 1}")
    return torch.device("cuda", ids[local_rank % len(ids)])


def all_gather_object(obj):
    """Every rank's value of a picklable object, as a list indexed by rank (a collective)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_gather_tensor(tensor):
    """Every rank's `tensor` (the same shape on each), stacked in rank order (a collective)."""
    if not is_distributed():
        return tensor.unsqueeze(0)
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.stack(gathered)


def setup_process(args, log):
    """Join torchrun's process group and pick this process's device; returns (rank, world_size, device).
    Checks the options that need a particular setup (--parallel, --sync_bn) before anything is loaded."""
    wants_cuda = not (args.gpu_devices and [str(d).lower() for d in args.gpu_devices] == ["cpu"])
    rank, size, local_rank = init_distributed(wants_cuda and torch.cuda.is_available())
    device = resolve_device(args.gpu_devices, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.parallel and (device.type != "cuda" or size > 1):
        raise UserError("--parallel (DataParallel) needs GPUs and a single process; under torchrun, DDP is used without it")
    if args.sync_bn and size > 1 and device.type != "cuda":
        raise UserError("--sync_bn needs GPUs (SyncBatchNorm does not run on the CPU); leave it out on the CPU")
    if args.sync_bn and size == 1:
        log.warning("--sync_bn has no effect in a single process; it applies under torchrun")
    return rank, size, device


def wrap_model(model, args, device, size):
    """(model, train_model, eval_model): the module itself (what checkpoints hold, SyncBatchNorm under DDP
    with --sync_bn), the wrapper that trains (DDP, DataParallel, compiled) and the one that evaluates
    (never DDP: evaluation shards may differ in size, and DDP's forward is a collective)."""
    if args.sync_bn and size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model = eval_model = model
    if size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        settle_buckets(train_model)
    elif args.parallel:
        ids = [int(d) for d in args.gpu_devices] if args.gpu_devices else list(range(torch.cuda.device_count()))
        train_model = eval_model = torch.nn.DataParallel(model, device_ids=ids)
    if args.compile:
        compiled = torch.compile(train_model, backend=args.compile_backend)
        eval_model = compiled if eval_model is train_model else torch.compile(eval_model, backend=args.compile_backend)
        train_model = compiled
    return model, train_model, eval_model


def settle_buckets(ddp):
    """Have DDP lay out its gradient buckets now, the same way at every start of a run, by one backward of
    zeros through every trainable parameter, in reverse order of `parameters()`.

    DDP all-reduces a bucket of gradients at once, and the all-reduce adds an element's values over the
    processes in an order set by its place in the bucket. DDP's first step after it is built runs on a
    provisional layout, and DDP lays the buckets out again from the order in which that step's gradients came.
    A run resumed at step k would then take step k + 1 on the provisional layout where the uninterrupted run
    used the final one, and on 3 processes or more (a sum of two is the same either way) its weights would
    differ in the last bits. Settled here, every step of every start runs on this layout: the one DDP itself
    starts from when it cannot rebuild, gradients bucketed from the output back to the input. Costs one
    all-reduce of zeros at the start."""
    module = ddp.module
    parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
    sparse = {id(layer.weight) for layer in module.modules()  # DDP expects their gradients sparse
              if isinstance(layer, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and layer.sparse}

    def zero(parameter):
        if id(parameter) in sparse:
            first = torch.zeros(1, dtype=torch.long, device=parameter.device)
            return torch.nn.functional.embedding(first, parameter, sparse=True).sum() * 0
        return (parameter * 0).sum()

    def zeros(*_):
        total = parameters[0].new_zeros(())
        for parameter in parameters:  # backward meets them last first
            total = total + zero(parameter)
        return total

    module.forward = zeros
    try:
        ddp().backward()  # DDP records the order of the gradients; its next forward lays out the buckets
    finally:
        del module.forward
    for parameter in parameters:
        parameter.grad = None


def no_sync(model, skip):
    """DDP's no_sync() while `skip` (gradients are summed across ranks only when it is off); else nothing."""
    while not isinstance(model, torch.nn.parallel.DistributedDataParallel) and hasattr(model, "_orig_mod"):
        model = model._orig_mod
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()
