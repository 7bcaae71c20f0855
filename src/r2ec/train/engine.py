"""The training engine under accelerate: the Accelerator a run gets, and what DeepSpeed ZeRO-2 needs beyond it.

DeepSpeed is selected the way ``accelerate launch --config_file configs/accelerate/zero2.yaml`` selects it
(``ACCELERATE_USE_DEEPSPEED=true``, ``ACCELERATE_DEEPSPEED_CONFIG_FILE``). Two of its behaviours shape the harness:

- ZeRO-2 keeps fp32 master copies of the trainable weights in the optimizer and writes them back over the model
  after every optimizer step. Weights written into the model after ``prepare`` (a resume, a warm start, a readout
  fit) are therefore lost at the first step unless the master copies are refreshed from the model:
  :func:`sync_master_weights`.
- The optimizer state is partitioned over the ranks. A checkpoint holds every rank's partition
  (:func:`optimizer_state`, a collective) and ZeRO's loader takes that list (:func:`load_optimizer_state`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from r2ec import dist
from r2ec.errors import UserError


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def process_state():
    """accelerate's process-wide state, built the way :func:`make_accelerator` needs it (gloo under DeepSpeed
    without CUDA); the CLI takes it before the run to let only the main process reset the run directory."""
    from accelerate import PartialState
    cuda = torch.cuda.is_available()
    if deepspeed_requested() and not cuda:
        return PartialState(cpu=False, backend="gloo")
    return PartialState(cpu=not cuda)


def shutdown() -> None:
    """The end of a multi-process run: every rank meets once more, then the default process group is destroyed
    (left to interpreter exit, its background threads can abort the process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def make_accelerator(mixed_precision: str):
    """The run's Accelerator (the schedule counts this run's optimizer steps: never stepped once per process).

    Without CUDA, accelerate has no route to DeepSpeed (its CPU state ignores the DeepSpeed plugin and each
    process would train alone), so the process group is named gloo here and DeepSpeed's CPU accelerator runs the
    ZeRO step: that is how the 2-process ZeRO-2 tests run on a CPU machine."""
    from accelerate import Accelerator
    cuda = torch.cuda.is_available()
    if deepspeed_requested():
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("ACCELERATE_USE_DEEPSPEED=true (a DeepSpeed accelerate config) but deepspeed is not "
                            "installed: pip install 'r2ec[gpu]' (deepspeed==0.19.8; on a CPU machine "
                            "DS_BUILD_OPS=0 pip install deepspeed==0.19.8)")
        if not cuda:
            process_state()
            return Accelerator(cpu=False, mixed_precision=mixed_precision, step_scheduler_with_optimizer=False)
    return Accelerator(cpu=not cuda, mixed_precision=mixed_precision, step_scheduler_with_optimizer=False)


def uses_deepspeed(acc: Any) -> bool:
    from accelerate.utils import DistributedType
    return acc.distributed_type == DistributedType.DEEPSPEED


def engine_name(acc: Any) -> str:
    """``deepspeed``, ``single`` (one process) or accelerate's distributed type (``multi_cpu``, ``multi_gpu``)."""
    if uses_deepspeed(acc):
        return "deepspeed"
    kind = acc.distributed_type.value.lower()
    return "single" if kind == "no" else kind


def sync_master_weights(acc: Any, model: Any) -> None:
    """After weights were written into the model outside an optimizer step: make ZeRO's fp32 master copies (this
    rank's partition) equal to them, so that the next step updates them instead of restoring the old ones. A
    no-op without DeepSpeed."""
    if uses_deepspeed(acc):
        model.optimizer.refresh_fp32_params()


def optimizer_state(acc: Any, opt: Any) -> Any:
    """The optimizer state to checkpoint: its ``state_dict``, or under DeepSpeed every rank's ZeRO partition in
    rank order (a collective: every rank calls it)."""
    sd = opt.state_dict()
    return dist.gather_objects(acc, sd) if uses_deepspeed(acc) else sd


def engine_fingerprint(acc: Any) -> dict[str, Any]:
    """What a checkpoint's optimizer state depends on beyond the params: under DeepSpeed, its partitioning over
    the processes (a checkpoint of another engine or process count is not resumed: the run starts over)."""
    return {"engine": f"deepspeed/{dist.world(acc)}"} if uses_deepspeed(acc) else {}


def load_optimizer_state(acc: Any, opt: Any, state: Any, where: str) -> None:
    """Load what :func:`optimizer_state` saved; a checkpoint of the other engine (or process count) is refused
    (:func:`engine_fingerprint` keeps a run from resuming one; this names the file if one is handed over)."""
    if uses_deepspeed(acc) != isinstance(state, list) or (isinstance(state, list) and len(state) != dist.world(acc)):
        saved = f"DeepSpeed with {len(state)} processes" if isinstance(state, list) else "without DeepSpeed"
        now = f"DeepSpeed with {dist.world(acc)} processes" if uses_deepspeed(acc) else "without DeepSpeed"
        raise UserError(f"{where}: checkpoint written {saved}, this run is {now}; remove it to start over")
    opt.load_state_dict(state)
