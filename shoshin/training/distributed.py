"""Data-parallel training with PyTorch's own engine: `torchrun` starts the processes, DDP syncs them.

Every process ("rank") holds a full copy of the model and trains on its own slice of each global
batch; DDP averages the gradients, so all copies take the same optimizer step. The contract:

- `train.batch_size` is per process: a step sees batch_size * world_size rows in all. The batch
  sampler draws the whole global batch from one seeded generator on every rank and each rank keeps
  its own rows, so 2 processes with batch b see exactly the rows of 1 process with batch 2b.
- Only rank 0 writes: the run directory, logs, checkpoints, MLflow. It creates the run and tells
  the other ranks its path.
- A failure on one rank makes that process exit; torchrun then stops the others with SIGTERM,
  which rank 0 turns into an exception so the run is marked failed instead of left "running".

The backend is NCCL on CUDA and gloo on CPU. Without torchrun (no WORLD_SIZE in the environment)
everything here is a no-op for a single process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from shoshin.errors import ShoshinError

T = TypeVar("T")


class RankTerminated(ShoshinError):
    """Raised in a rank that torchrun (or a user) stopped with SIGTERM."""


@dataclass
class DistContext:
    """Where this process stands in the job: its rank, the number of ranks, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch of batch_size * world_size rows."""
        rows = batch.size(0) // self.world_size
        return batch[self.rank * rows : (self.rank + 1) * rows]

    def mean(self, value: float) -> float:
        """The mean of a float over all ranks (the value itself on one process)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank: lets ranks agree to stop together."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and hand its result (or its error) to every rank."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except BaseException as exc:
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            if self.is_main:
                raise value
            raise ShoshinError(f"rank 0 failed: {value}")
        return value

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. to build a shared cache), then the others do."""
        if self.enabled and not self.is_main:
            dist.barrier()
        yield
        if self.enabled and self.is_main:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo moves CPU tensors.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def rank_zero_only(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run a method only on rank 0, the one process that writes the run directory.

    For methods of an object holding its DistContext as `self.dist`; other ranks get None.
    """

    @functools.wraps(method)
    def on_rank_zero(self: Any, *args: Any, **kwargs: Any) -> T | None:
        return method(self, *args, **kwargs) if self.dist.is_main else None

    return on_rank_zero


def under_torchrun() -> bool:
    """True in a process started by torchrun (it sets WORLD_SIZE and LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device: torch.device) -> DistContext:
    """Join the torchrun job if there is one (idempotent); otherwise a one-process context."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # DDP imports torch._dynamo (and with it torch._inductor) when it is built; imported
        # while a process group exists, they keep a reference to it, so destroy_process_group()
        # cannot free it and gloo's threads live on into interpreter teardown, where they
        # sometimes abort the process ("terminate called without an active exception",
        # SIGABRT; torchrun then fails the job). Imported before the group exists, they do not.
        importlib.import_module("torch._dynamo")

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        signal.signal(signal.SIGTERM, _raise_terminated)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise RankTerminated("stopped by SIGTERM: another rank failed, or the job was cancelled")


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun job)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `shoshin ARGV` as a one-machine torchrun job with `nproc` processes; returns its status."""
    if nproc < 1:
        raise ShoshinError(f"--nproc must be at least 1, got {nproc}")
    if under_torchrun():
        raise ShoshinError("--nproc starts torchrun itself; under torchrun, leave --nproc out")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free local port: several jobs can share the machine
        f"--nproc_per_node={nproc}",
        "-m",
        "shoshin",
        *argv,
    ]
    proc = subprocess.Popen(command)
    # Ctrl-C reaches torchrun and its workers directly (same process group); this process only
    # waits for them to save and stop, instead of killing torchrun half-way. SIGTERM (kill,
    # timeout, a scheduler) reaches this process alone: it is passed on to torchrun, which stops
    # its workers with it, and this process waits for them the same way.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
