"""Multi-GPU sampling: torch.distributed plus diffusers' context parallelism (Ulysses / ring attention).

Both front ends are launched as upstream's are: `torchrun --nproc_per_node=8 generate.py ... --ulysses_size 8`,
`torchrun --nproc_per_node=8 sample_video.py ... --ulysses-degree 8` (HunyuanVideo's plan, which diffusers does
not ship, is in models/hunyuan_video/context_parallel.py).
Every rank runs the whole pipeline on the same inputs (same prompt embeddings, same CPU-generated noise, so
the seed is rank 0's); inside the transformer diffusers splits the video tokens over the ranks and gathers the
output. The delta cache needs nothing else: its schedule is static, so every rank reuses the same blocks on
the same steps and the collectives inside attention stay matched (a data-dependent skip decision could
differ between ranks and hang them). Each rank keeps the deltas of its own tokens; the linear forecast's trust
check sums its distances over the ranks (one all-reduce, reached by every rank at the same refresh). Only rank
0 writes files.

Order matters: cache hooks go on before `enable_context_parallel` (the other order fails with a shape
mismatch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from unittest import mock

from .errors import UserInputError

if TYPE_CHECKING:  # torch is imported where it is used: flag checks stay instant
    import torch


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a torchrun launch; a plain run is rank 0 of 1."""

    rank: int
    world_size: int
    device: torch.device
    ulysses_degree: int = 1
    ring_degree: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_parallel(self) -> bool:
        """Several processes: torch.distributed is initialised and the transformer is split over them."""
        return self.world_size > 1


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when run as a plain script)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_degrees(ulysses_degree: int, ring_degree: int, flags: tuple[str, str]) -> None:
    """Degrees >= 1 whose product is the number of launched processes; one line naming the flags otherwise."""
    ulysses_flag, ring_flag = flags
    if ulysses_degree < 1 or ring_degree < 1:
        raise UserInputError(f"{ulysses_flag} and {ring_flag} must be >= 1, got {ulysses_degree} and {ring_degree}")
    world = launched_world_size()
    if ulysses_degree * ring_degree != world:
        launch = (f"launch with torchrun --nproc_per_node={ulysses_degree * ring_degree}" if world == 1 else
                  f"{world} processes were launched")
        raise UserInputError(f"{ulysses_flag} x {ring_flag} = {ulysses_degree * ring_degree} must equal the number of "
                             f"processes; {launch}")


def init_process_group(ulysses_degree: int, ring_degree: int) -> ProcessGroup:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); a single process joins none and runs on
    the GPU when there is one."""
    import torch
    import torch.distributed as dist

    if ulysses_degree * ring_degree == 1:
        return ProcessGroup(rank=0, world_size=1, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserInputError(f"process {local_rank} of this machine has no GPU of its own: it has "
                                 f"{torch.cuda.device_count()}; launch at most that many (torchrun --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        if ring_degree > 1:  # diffusers' ring attention merges partial results by their LSE: GPU backends only
            raise UserInputError("ring attention (--ring_size > 1) needs GPUs; on CPUs use the Ulysses degree alone")
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device,
                        ulysses_degree=ulysses_degree, ring_degree=ring_degree)


def check_heads(num_heads: int, ulysses_degree: int, heads_flag: str, ring_supported: bool = True) -> None:
    """Ulysses gives each rank whole heads."""
    if num_heads % ulysses_degree:
        raise UserInputError(f"{heads_flag} {ulysses_degree} must divide the model's {num_heads} attention "
                             f"heads; use a divisor" + (", or ring attention for the rest" if ring_supported else ""))


def check_model_fits(group: ProcessGroup, *, num_heads: int, num_tokens: int, heads_flag: str,
                     ring_supported: bool = True) -> None:
    """Ulysses gives each rank whole heads, and the token sequence is split evenly over all ranks."""
    check_heads(num_heads, group.ulysses_degree, heads_flag, ring_supported)
    if num_tokens % group.world_size:
        raise UserInputError(f"the video's {num_tokens} tokens do not split evenly over {group.world_size} processes; "
                             f"choose a size or frame count whose token count does")


def enable_context_parallel(transformer: torch.nn.Module, group: ProcessGroup, cp_plan: dict | None = None) -> None:
    """diffusers' context parallelism on `transformer` (after the cache hooks are attached), by the model's own
    `_cp_plan` unless `cp_plan` is given."""
    import torch
    from diffusers import ContextParallelConfig

    if group.ring_degree > 1:
        # Ring attention merges the ranks' partial results by their log-sum-exp, which diffusers' default
        # ("native") backend cannot return; its cuDNN one can, and takes attention masks.
        transformer.set_attention_backend("_native_cudnn")
    config = ContextParallelConfig(ulysses_degree=group.ulysses_degree, ring_degree=group.ring_degree)
    if group.device.type == "cpu":
        # diffusers takes the device type torch was built for (torch._C._get_accelerator: "cuda" in a CUDA build,
        # GPU or not) and each rank's device as rank % torch.accelerator.device_count(), a division by zero
        # without an accelerator. These processes run on the CPU: every rank's device is the one CPU.
        with (mock.patch.object(torch._C, "_get_accelerator", lambda: torch.device("cpu")),
              mock.patch.object(torch.accelerator, "device_count", lambda: 1)):
            transformer.enable_parallelism(config=config, cp_plan=cp_plan)
    else:
        transformer.enable_parallelism(config=config, cp_plan=cp_plan)


def from_rank0(value):
    """Rank 0's `value` (any picklable object) on every rank of the joined process group: random seeds are
    drawn per process."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(group: ProcessGroup, work):
    """`work()` run by rank 0 alone, its (picklable) result on every rank. A UserInputError there is raised on
    every rank, so that each says the same one line (the others would otherwise fail in the broadcast)."""
    if not group.is_parallel:
        return work()
    result, error = None, None
    if group.is_main:
        try:
            result = work()
        except UserInputError as err:
            error = str(err)
    result, error = from_rank0((result, error))
    if error is not None:
        raise UserInputError(error)
    return result


def log_from_main_only(group: ProcessGroup) -> None:
    """One log, rank 0's: other ranks keep only warnings and errors."""
    if not group.is_main:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")


def close(group: ProcessGroup) -> None:
    if group.is_parallel:
        import torch.distributed as dist

        dist.destroy_process_group()


@contextmanager
def process_group(ulysses_degree: int, ring_degree: int) -> Iterator[ProcessGroup]:
    """`init_process_group` for the length of a `with` block."""
    group = init_process_group(ulysses_degree, ring_degree)
    try:
        yield group
    finally:
        close(group)
