"""The vLLM rollout engine as the project builds it, against a stand-in ``vllm`` package (vLLM is GPU-only and not
installed here): a fake ``vllm`` in ``sys.modules`` records every ``LLM(...)``, ``SamplingParams(...)``,
``LoRARequest(...)`` and ``generate`` call and returns deterministic completions shaped like vLLM's
``RequestOutput`` (``outputs[j].token_ids`` / ``logprobs``).

Checked through the project's own factory (:func:`r2ec.model.users.make_engine_for` on a host holding the tiny
random model + LoRA): the executor and device per ``recpo.vllm_mode`` and local rank; a local model folder whose
saved tokenizer has ``<answer>`` for every backbone kind buildable offline (the tiny model, a local folder whose
tokenizer lacks ``<answer>``, and the same folder reached through a hub-like id); the stop id = that tokenizer's
``<answer>`` id, inside the model's vocabulary; a new LoRA request id per adapter version; sampling parameters =
the config's.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from r2ec.config import ConfigError, LlmCfg, LoraCfg, Params
from r2ec.config.methods import RecpoCfg

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Rec:
    def __init__(self):
        self.llm: list[dict] = []
        self.sampling: list[dict] = []
        self.lora: list[tuple] = []
        self.generate: list[dict] = []


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install a recording stand-in ``vllm`` (LLM, SamplingParams, lora.request.LoRARequest)."""
    rec = Rec()

    class SamplingParams:
        def __init__(self, **kw):
            rec.sampling.append(kw)
            self.__dict__.update(kw)

    class LoRARequest:
        def __init__(self, lora_name, lora_int_id, lora_path, **kw):
            rec.lora.append((lora_name, lora_int_id, lora_path))
            self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

    class LLM:
        def __init__(self, **kw):
            rec.llm.append(kw)

        def generate(self, prompts, sampling_params=None, lora_request=None, use_tqdm=True, **kw):
            rec.generate.append({"prompts": prompts, "params": sampling_params, "lora_request": lora_request})
            params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            outs = []
            for i, (p, sp) in enumerate(zip(prompts, params)):
                stop = sp.stop_token_ids[0]
                comps = []
                for j in range(sp.n):
                    toks = [40 + j, 41 + i] + ([stop] if j % 2 == 0 else [])  # odd samples run out of tokens
                    lps = ([{t: SimpleNamespace(logprob=-1.0, rank=1, decoded_token="x")} for t in toks]
                           if sp.__dict__.get("logprobs") is not None else None)
                    comps.append(SimpleNamespace(index=j, text="x", token_ids=toks, cumulative_logprob=-float(len(toks)),
                                                 logprobs=lps, finish_reason="stop" if j % 2 == 0 else "length",
                                                 stop_reason=stop if j % 2 == 0 else None))
                outs.append(SimpleNamespace(request_id=str(i), prompt=None, prompt_token_ids=p["prompt_token_ids"],
                                            outputs=comps, finished=True))
            return outs

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    lora.request = request
    vllm.lora = lora
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)
    return rec


def _rc(**kw) -> RecpoCfg:
    base = dict(engine="vllm", group_size=3, temperature=0.7, top_k=5, max_reasoning_tokens=9, seed=11)
    return RecpoCfg(**{**base, **kw})


def _host(tmp_path: Path, backbone: str = "tiny-random", rc: RecpoCfg | None = None):
    """What make_engine_for reads of a host: params, the PEFT policy and tokenizer as the harness loads them,
    the backbone cache dir, the weight version."""
    from r2ec.llm.backbone import add_lora, backbone_cache_name, load_backbone

    p = Params(llm=LlmCfg(backbone=backbone, dtype="float32", grouped_decode=False, max_prompt_tokens=64),
               lora=LoraCfg(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")), recpo=rc or _rc())
    model, tok = load_backbone(p.llm, None)
    policy = add_lora(model, p.lora, seed=0)
    return SimpleNamespace(p=p, policy=policy, tok=tok, acc=None, version=0,
                           backbone_cache=tmp_path / "backbones" / backbone_cache_name(backbone),
                           infer=lambda: (policy, contextlib.nullcontext()))


def _build(host, rc=None):
    from r2ec.model.users import make_engine_for
    return make_engine_for(host, rc or host.p.recpo)


def _save_plain_backbone(folder: Path) -> None:
    """A local HF folder whose tokenizer has NO ``<answer>`` (a hub model as downloaded): bytes + ChatML specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    t = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<pad>", "<|im_start|>",
                                                                                  "<|im_end|>")])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>")
    assert len(tok.encode("<answer>", add_special_tokens=False)) > 1
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


def _assert_serves_answer(rec, eng, host):
    from transformers import AutoConfig, AutoTokenizer

    from r2ec.llm.backbone import answer_token_id

    kw = rec.llm[-1]
    path = Path(kw["model"])
    assert path.is_dir() and kw["tokenizer"] == kw["model"]
    saved = AutoTokenizer.from_pretrained(path)
    aid = answer_token_id(saved)  # a single token in the folder vLLM reads
    vocab = AutoConfig.from_pretrained(path).vocab_size
    assert aid == answer_token_id(host.tok) and aid < vocab
    eng.generate([[1, 2, 3]], 2, 1.0, 0, 4, seed=0, old_logprobs=False)
    assert rec.sampling[-1]["stop_token_ids"][0] == aid
    assert all(0 <= s < vocab for s in rec.sampling[-1]["stop_token_ids"])


# ------------------------------------------------------------------------------------------------------------
# placement


def test_colocate_one_engine_per_rank_on_its_local_device(fake_vllm, tmp_path, monkeypatch):
    host = _host(tmp_path)
    set_dev = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: set_dev.append(d))
    for rank, local in ((0, 0), (3, 1)):
        for k, v in (("RANK", rank), ("LOCAL_RANK", local), ("WORLD_SIZE", 4)):
            monkeypatch.setenv(k, str(v))
        eng = _build(host)
        kw = fake_vllm.llm[-1]
        assert kw["distributed_executor_backend"] == "external_launcher"
        assert kw["tensor_parallel_size"] == 1
        assert eng.placement["device"] == local and set_dev[-1] == local
        assert (eng.placement["rank"], eng.placement["world_size"]) == (rank, 4)
        assert kw["gpu_memory_utilization"] == host.p.recpo.vllm_gpu_memory_utilization


def test_single_process_colocate_sets_the_rendezvous(fake_vllm, tmp_path):
    import os
    eng = _build(_host(tmp_path))
    assert fake_vllm.llm[-1]["distributed_executor_backend"] == "external_launcher"
    assert eng.placement == {"rank": 0, "local_rank": 0, "world_size": 1, "device": 0,
                             "llm_kwargs": {"distributed_executor_backend": "external_launcher",
                                            "tensor_parallel_size": 1}}
    assert os.environ["WORLD_SIZE"] == "1" and os.environ["LOCAL_RANK"] == "0" and "MASTER_PORT" in os.environ


def test_dedicated_is_refused_before_anything_is_built(fake_vllm, tmp_path):
    rc = _rc(vllm_mode="dedicated")
    host = _host(tmp_path, rc=rc)
    with pytest.raises(ConfigError, match="not built yet"):
        _build(host, rc)
    assert fake_vllm.llm == [] and not host.backbone_cache.exists()
    with pytest.raises(ConfigError, match="vllm_mode"):
        _rc(vllm_mode="server")


# ------------------------------------------------------------------------------------------------------------
# the served folder and its stop id


def test_tiny_backbone_is_saved_with_answer(fake_vllm, tmp_path):
    host = _host(tmp_path)
    eng = _build(host)
    _assert_serves_answer(fake_vllm, eng, host)
    assert Path(fake_vllm.llm[-1]["model"]) == host.backbone_cache  # saved once into the cache
    mtime = (host.backbone_cache / "r2ec_backbone.json").stat().st_mtime_ns
    _build(host)
    assert (host.backbone_cache / "r2ec_backbone.json").stat().st_mtime_ns == mtime  # reused, not re-saved


def test_local_folder_without_answer_is_resaved(fake_vllm, tmp_path):
    src = tmp_path / "plain"
    _save_plain_backbone(src)
    host = _host(tmp_path, backbone=str(src))
    eng = _build(host)
    assert Path(fake_vllm.llm[-1]["model"]) != src
    _assert_serves_answer(fake_vllm, eng, host)


def test_hub_id_backbone_is_saved_with_answer(fake_vllm, tmp_path, monkeypatch):
    """A hub id (``org/name``) is simulated by redirecting ``from_pretrained`` of that id to a saved folder."""
    import transformers

    src = tmp_path / "plain"
    _save_plain_backbone(src)
    hub_id = "example-org/tiny-plain"
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained.__func__

        def redirect(c, name, *a, _real=real, **k):
            return _real(c, str(src) if str(name) == hub_id else name, *a, **k)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(redirect))
    host = _host(tmp_path, backbone=hub_id)
    eng = _build(host)
    assert fake_vllm.llm[-1]["model"] != hub_id
    _assert_serves_answer(fake_vllm, eng, host)


def test_stop_id_outside_the_vocabulary_is_refused(fake_vllm, tmp_path):
    import json

    from r2ec.llm.rollout import engine_vocab
    host = _host(tmp_path)
    _build(host)
    cfg = json.loads((host.backbone_cache / "config.json").read_text())
    cfg["vocab_size"] = 100  # a model whose embedding was never resized for the added <answer>
    (host.backbone_cache / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        engine_vocab(host.backbone_cache)
    with pytest.raises(ValueError, match="local backbone folder"):
        engine_vocab("org/not-a-folder")


# ------------------------------------------------------------------------------------------------------------
# adapter refresh and sampling parameters


def test_new_lora_request_per_adapter_version(fake_vllm, tmp_path):
    from safetensors.torch import load_file

    from r2ec.model.users import UserEncoder
    host = _host(tmp_path)
    host.ds = SimpleNamespace(items=__import__("polars").DataFrame({"item_id": [1]}))
    eng = _build(host)
    users = UserEncoder(host, host.p.recpo, eng, reasoning=True)

    def rollout():
        users.sync_engine()
        users.generate([[1, 2, 3]], 2, 1.0, 0, seed=0, old_logprobs=False)
        return fake_vllm.generate[-1]["lora_request"]

    first = rollout()
    assert rollout().lora_int_id == first.lora_int_id  # same weights: same adapter
    with torch.no_grad():  # an update: new LoRA weights, the host's version moves
        for n, prm in host.policy.named_parameters():
            if "lora_B" in n:
                prm.add_(0.5)
    host.version += 1
    second = rollout()
    assert second.lora_int_id != first.lora_int_id and second.lora_name != first.lora_name
    assert second.lora_path != first.lora_path and Path(second.lora_path).is_dir()
    saved = load_file(str(Path(second.lora_path) / "adapter_model.safetensors"))
    b = [v for k, v in saved.items() if "lora_B" in k]
    assert b and all(torch.allclose(v, torch.full_like(v, 0.5)) for v in b)  # the updated weights, not stale
    host.version += 1
    assert rollout().lora_int_id not in (first.lora_int_id, second.lora_int_id)


def test_sampling_parameters_match_the_config(fake_vllm, tmp_path):
    from r2ec.model.users import UserEncoder
    rc = _rc()
    host = _host(tmp_path, rc=rc)
    host.ds = SimpleNamespace(items=__import__("polars").DataFrame({"item_id": [1]}))
    eng = _build(host, rc)
    kw = fake_vllm.llm[-1]
    assert kw["seed"] == rc.seed and kw["enable_lora"] and kw["dtype"] == host.p.llm.dtype
    assert kw["max_model_len"] >= host.p.llm.max_prompt_tokens + rc.max_reasoning_tokens
    users = UserEncoder(host, rc, eng, reasoning=True)
    prompts = [[1, 2, 3], [4, 5]]
    groups = users.generate(prompts, rc.group_size, rc.temperature, rc.top_k, seed=100)
    sp = fake_vllm.sampling[-len(prompts):]
    for i, s in enumerate(sp):
        assert s["n"] == rc.group_size and s["temperature"] == rc.temperature and s["top_k"] == rc.top_k
        assert s["max_tokens"] == rc.max_reasoning_tokens and s["seed"] == 100 + i
    reqs = fake_vllm.generate[-1]["prompts"]
    assert [r["prompt_token_ids"] for r in reqs] == prompts
    aid = eng.answer_id
    assert [len(g) for g in groups] == [rc.group_size] * len(prompts)
    for g in groups:
        for j, t in enumerate(g):
            assert t.completion_ids[-1] == aid and t.forced == (j % 2 == 1)
            assert t.old_logprobs.shape == (len(t.completion_ids),)
    # greedy evaluation: temperature 0, one sample
    users.generate(prompts, 1, 0.0, 0, seed=5, old_logprobs=False)
    assert fake_vllm.sampling[-1]["temperature"] == 0.0 and fake_vllm.sampling[-1]["n"] == 1
