"""The few collectives the LLM methods need under ``accelerate launch`` with N processes (no-ops for one).

Every helper is a collective when ``num_processes > 1``: every rank must call it, in the same order. With one
process each returns its input unchanged, so a single-process run takes exactly the code paths it always took.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def world(acc: Any) -> int:
    """Number of processes of ``acc`` (an Accelerator; 1 when ``acc`` is None)."""
    return 1 if acc is None else int(acc.num_processes)


def from_main(acc: Any, obj: Any) -> Any:
    """``obj`` as the main process holds it (broadcast from rank 0): a decision taken once for every rank."""
    if world(acc) == 1:
        return obj
    from accelerate.utils import broadcast_object_list
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def gather_objects(acc: Any, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` for one process)."""
    if world(acc) == 1:
        return [obj]
    out: list[Any] = [None] * world(acc)
    torch.distributed.all_gather_object(out, obj)
    return out


def all_sum(acc: Any, x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the ranks (``x`` itself for one process)."""
    if world(acc) == 1:
        return x
    y = x.detach().clone().to(acc.device)
    torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
    return y.to(x.device)


def sum_gradients(acc: Any, params: list[torch.nn.Parameter], scale: float = 1.0) -> None:
    """Sum (times ``scale``) the gradients of ``params`` over the ranks, in place. A parameter keeps
    ``grad=None`` only when it has none on every rank (as one process on the whole batch would leave it)."""
    if world(acc) == 1:
        return
    dev = acc.device
    has = torch.tensor([q.grad is not None for q in params], dtype=torch.float32, device=dev)
    torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.SUM)
    live = [q for q, h in zip(params, has.tolist()) if h > 0]
    if not live:
        return
    flat = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).detach().reshape(-1).float().to(dev)
                      for q in live])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    if scale != 1.0:
        flat.mul_(scale)
    o = 0
    for q in live:
        n = q.numel()
        q.grad = flat[o:o + n].view_as(q).to(device=q.device, dtype=q.dtype).clone()
        o += n


def shard(n: int, rank: int, n_proc: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` rows (``numpy.array_split``'s split)."""
    base, extra = divmod(n, n_proc)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def clock_scale(rank: int) -> float:
    """Test hook: ``R2EC_CLOCK_SCALE="<rank>:<factor>"`` makes that rank's measured seconds ``factor`` times
    longer (its wall-clock budget ends first); 1.0 otherwise."""
    spec = os.environ.get("R2EC_CLOCK_SCALE", "")
    if ":" not in spec:
        return 1.0
    r, f = spec.split(":", 1)
    return float(f) if int(r) == rank else 1.0
