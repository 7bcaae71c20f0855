"""A tiny random Llama + in-memory byte-level BPE tokenizer (no download) for tests and the CI smoke config.

The tokenizer is byte-level BPE with the 256 byte symbols as its vocabulary and no merges (so every byte is a
token), plus the special tokens ``<pad>``, ``<|im_start|>``, ``<|im_end|>`` and the reasoning markers
``<answer>`` / ``</answer>`` (single tokens), and a ChatML chat template like SmolLM2's (with a default system
message, so that :func:`r2ec.llm.prompts.render_prompt` has one to drop).
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


def tiny_tokenizer():
    """Byte-level BPE tokenizer built in memory: ids 0..255 are bytes, then the special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKERS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML_TEMPLATE
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
