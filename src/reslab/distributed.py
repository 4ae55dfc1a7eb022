"""Data-parallel training under torchrun: detection from its environment variables, the process group, and the few
collectives the training loop needs.

Launched by `torchrun --nproc-per-node N -m reslab train ...`, each process sees RANK, LOCAL_RANK and WORLD_SIZE
(nanoGPT's one-line detection). A plain `reslab train` sees none of them and runs as rank 0 of 1; every helper below
is then a no-op, so the loop has a single code path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from reslab.device import pick_device
from reslab.errors import ReslabError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() created the process group, so cleanup() destroys it

    @property
    def is_main(self) -> bool:
        """The one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (`--max-restarts`); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def run_id() -> str | None:
    """torchrun's rendezvous id: the same on every node and across restarts of one job (a uuid under --standalone)."""
    value = os.environ.get("TORCHELASTIC_RUN_ID")
    return None if value in (None, "", "none") else value


def backend_for(device: torch.device) -> str:
    """The process-group backend for `device`: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun with more than one process, join the process group (NCCL on CUDA,
    gloo on the CPU)."""
    if not under_torchrun():
        return DistInfo(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    dev = pick_device(device, local_rank=local_rank)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        if dev.type == "mps":
            raise ReslabError("--device mps: torch has no multi-process backend for MPS; use one process")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = backend_for(dev)
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's agent keeps one key-value store for all restarts, and the process group's keys (each rank's
            # address) are not namespaced by attempt: after a restart a rank can read its peer's address from the
            # dead attempt and hang in connect (pytorch/pytorch#135712). Namespace them by the restart count.
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                world_size,
                is_master=False,
                timeout=timedelta(minutes=10),
            )
            store = dist.PrefixStore(f"reslab/attempt{restart_count()}/", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, **kwargs)
        else:
            dist.init_process_group(backend, **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, owns_group=owns_group)


def cleanup(info: DistInfo) -> None:
    """Leave the process group if `setup` joined it (a caller's own group is left alone)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the process group (1 outside torchrun)."""
    return dist.get_world_size() if active() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over processes in place (no-op in a single process); returns `t`."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, *, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every process: decisions made once (the run folder, the checkpoint to resume) so that
    every rank, on every node, acts on the same answer without needing a shared filesystem."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, *, src: int = 0) -> None:
    """Give every rank `src`'s BatchNorm running statistics.

    Without SyncBN each rank updates them from its own batches, so after an epoch they differ slightly between ranks;
    evaluation and checkpoints must use one copy (rank 0's, the one DDP broadcasts before each forward anyway).
    """
    if active():
        for b in module.buffers():
            dist.broadcast(b, src=src)


def state_fingerprint(module: torch.nn.Module) -> str:
    """A SHA-256 of every parameter and buffer, bit for bit: equal on two ranks only if their states are identical."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ranks_agree(value: Any) -> bool:
    """True when `value` is the same on every process."""
    if not active():
        return True
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)
