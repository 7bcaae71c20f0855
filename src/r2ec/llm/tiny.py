"""A tiny random Llama + in-memory byte-level BPE tokenizer (no download) for tests and the CI smoke config
(``llm.backbone: tiny-random``; ``tiny-random-gemma2`` / ``tiny-random-qwen2``: :data:`TINY_BACKBONES`).

The tokenizer is byte-level BPE with the 256 byte symbols as its vocabulary and no merges (so every byte is a
token), plus the special tokens ``<pad>``, ``<|im_start|>``, ``<|im_end|>`` and the reasoning markers
``<answer>`` / ``</answer>`` (single tokens), and a ChatML chat template like SmolLM2's (with a default system
message, so that :func:`r2ec.llm.prompts.render_prompt` has one to drop).

:func:`tiny_gemma2_and_tokenizer` and :func:`tiny_qwen2_and_tokenizer` build the paper's two backbone families
the same way (random weights, configs in memory): a Gemma-2 with final-logit and attention softcapping, sliding-
window layers and a Gemma-like chat template that rejects the system role, and a Qwen-2 with a ChatML template.
"""

from __future__ import annotations

import torch

SPECIALS = ("<pad>", "<|im_start|>", "<|im_end|>")
MARKERS = ("<answer>", "</answer>")

# SmolLM2-Instruct's template shape (ChatML with a default system message).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Gemma-2-it's template shape: <bos>, no system role (raises), strictly alternating user/model turns.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Qwen2.5-Instruct's template shape (ChatML, default system message naming Qwen).
QWEN_TEMPLATE = CHATML_TEMPLATE.replace("You are a helpful AI assistant.",
                                        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")


def tiny_tokenizer(chat_template: str = CHATML_TEMPLATE, extra_specials: tuple[str, ...] = ()):
    """Byte-level BPE tokenizer built in memory: ids 0..255 are bytes, then the special tokens (then
    ``extra_specials``, e.g. Gemma's turn markers)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS + tuple(extra_specials)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKERS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = chat_template
    fast.padding_side = "left"
    return fast


def tiny_model_and_tokenizer(seed: int = 0, hidden: int = 64, layers: int = 2):
    """``(LlamaForCausalLM, PreTrainedTokenizerFast)``: a random 2-layer Llama (hidden 64) and the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def _finish(model, tok):
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def tiny_gemma2_and_tokenizer(seed: int = 0, hidden: int = 64, layers: int = 2, final_logit_softcapping: float = 5.0,
                              attn_logit_softcapping: float | None = 50.0, sliding_window: int = 16,
                              embed_std: float = 1.0):
    """``(Gemma2ForCausalLM, tokenizer)``: a random Gemma-2 (heads 4 / KV 2, alternating sliding-window and full
    layers, logits capped at ``final_logit_softcapping``) and the tiny tokenizer with :data:`GEMMA_TEMPLATE` and
    Gemma's turn markers (``<end_of_turn>`` is its EOS). The tied embeddings are drawn with std ``embed_std``
    (transformers' init, 0.02, gives logits of about ±0.5, which no cap touches; a trained Gemma's reach the cap)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = tiny_tokenizer(GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>"))
    tok.eos_token = "<end_of_turn>"
    cfg = Gemma2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                       query_pre_attn_scalar=hidden // 4, max_position_embeddings=2048, sliding_window=sliding_window,
                       final_logit_softcapping=final_logit_softcapping, attn_logit_softcapping=attn_logit_softcapping,
                       tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(cfg)
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, embed_std)
    return _finish(model, tok)


def tiny_qwen2_and_tokenizer(seed: int = 0, hidden: int = 64, layers: int = 2):
    """``(Qwen2ForCausalLM, tokenizer)``: a random Qwen-2 (heads 4 / KV 2, q/k/v biases, untied head) and the tiny
    tokenizer with :data:`QWEN_TEMPLATE`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer(QWEN_TEMPLATE)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg)
    return _finish(model, tok)


# llm.backbone values that build a tiny random model in memory: the CI smoke config's Llama and the paper's two
# backbone families (`make paper-smoke` runs one Table 1 group on each)
TINY_BACKBONES = {"tiny-random": tiny_model_and_tokenizer, "tiny-random-gemma2": tiny_gemma2_and_tokenizer,
                  "tiny-random-qwen2": tiny_qwen2_and_tokenizer}
