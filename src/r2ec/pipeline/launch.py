"""The command that starts an LLM training job in the workflow (``launch`` section of params.yaml).

One process: ``python``. N processes: ``torchrun --standalone`` (each job picks its own free rendezvous port, so
jobs run side by side) or ``accelerate launch`` with the configured accelerate file (DeepSpeed ZeRO-2 on GPUs);
``launch.deepspeed_config`` puts torchrun-started processes under DeepSpeed the way ``accelerate launch`` does
(its environment variables), which is how ZeRO-2 runs on CPU processes. The rule then appends
``-m r2ec train ...``; the training code shards each global batch over the processes it finds.
"""

from __future__ import annotations

import shlex

from r2ec.config import LaunchCfg


def launcher(lc: LaunchCfg) -> str:
    """The shell prefix of ``-m r2ec train ...`` for an LLM job."""
    if lc.processes == 1:
        return "python"
    if lc.launcher == "accelerate":
        return (f"accelerate launch --config_file {shlex.quote(lc.accelerate_config)} --num_machines 1 "
                f"--num_processes {lc.processes}")
    env = f"OMP_NUM_THREADS={lc.threads} "
    if lc.deepspeed_config:
        env += (f"ACCELERATE_USE_DEEPSPEED=true ACCELERATE_DEEPSPEED_CONFIG_FILE={shlex.quote(lc.deepspeed_config)} "
                "DS_ACCELERATOR=cpu ")
    return f"{env}torchrun --standalone --nproc_per_node {lc.processes}"


def job_threads(lc: LaunchCfg) -> int:
    """Cores an LLM job takes from Snakemake's ``--cores``: its processes times their threads."""
    return lc.processes * lc.threads
