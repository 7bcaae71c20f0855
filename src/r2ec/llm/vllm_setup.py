"""What the vLLM rollout engine (:class:`r2ec.llm.rollout.VLLMRolloutEngine`) is built from, without vLLM: the
LoRA rank it accepts, where the engine lives under ``recpo.vllm_mode``, and the checks of the backbone folder it
serves (``<answer>`` inside the model's vocabulary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


def vllm_lora_rank(model, default: int = 16) -> int:
    """Smallest ``max_lora_rank`` vLLM accepts that holds the PEFT model's LoRA rank."""
    r = default
    pc = getattr(model, "peft_config", None)
    if pc:
        r = max(int(c.r) for c in pc.values())
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"LoRA rank {r} exceeds vLLM's maximum {VLLM_LORA_RANKS[-1]}")


VLLM_MODES = ("colocate", "dedicated")


def vllm_placement(mode: str, env: dict | None = None) -> dict[str, Any]:
    """Where this process's vLLM engine lives under ``recpo.vllm_mode`` and the launcher's ``RANK`` /
    ``LOCAL_RANK`` / ``WORLD_SIZE`` (``env``, default ``os.environ``; absent = one process).

    ``colocate``: every training process builds its own engine on its own GPU, ``cuda:LOCAL_RANK``, with vLLM's
    ``external_launcher`` executor (vLLM joins the launcher's process group instead of spawning workers, so N
    processes do not all land on GPU 0). Returns ``{"rank", "local_rank", "world_size", "device", "llm_kwargs"}``.
    ``dedicated`` (the paper's: the last GPU generates while the others train) is not built yet.
    """
    import os

    env = os.environ if env is None else env
    rank, local, world = (int(env.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if mode == "dedicated":
        from r2ec.config import ConfigError
        raise ConfigError("recpo.vllm_mode=dedicated (one GPU generates for the others) is not built yet: use "
                          "colocate")
    if mode != "colocate":
        from r2ec.config import ConfigError
        raise ConfigError(f"recpo.vllm_mode: {mode!r} is not one of {list(VLLM_MODES)}")
    return {"rank": rank, "local_rank": local, "world_size": world, "device": local,
            "llm_kwargs": {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1}}


def engine_vocab(model_path: str | Path) -> tuple[int, int]:
    """``(<answer> id, vocabulary size)`` of a saved backbone folder: its tokenizer's id and its config's
    ``vocab_size`` (the rows of the embedding vLLM loads). One-line errors when the folder cannot serve."""
    from transformers import AutoConfig, AutoTokenizer

    from r2ec.llm.backbone import ANSWER, answer_token_id

    path = Path(model_path)
    if not path.is_dir():
        raise ValueError(f"vLLM needs a local backbone folder with {ANSWER} in its tokenizer, got {model_path!r}")
    try:
        sid = answer_token_id(AutoTokenizer.from_pretrained(path))
    except ValueError:
        raise ValueError(f"{path}: its tokenizer has no single {ANSWER} token (save it with the resized "
                         f"model, r2ec.llm.backbone.engine_backbone_dir)") from None
    cfg = AutoConfig.from_pretrained(path)
    vocab = int(cfg.get_text_config().vocab_size if hasattr(cfg, "get_text_config") else cfg.vocab_size)
    if not 0 <= sid < vocab:
        raise ValueError(f"{path}: {ANSWER} id {sid} lies outside the model's vocabulary of {vocab}")
    return sid, vocab
