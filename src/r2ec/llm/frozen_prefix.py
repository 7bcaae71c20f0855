"""Item prompts' hidden states below the first adapted layer, computed once (``llm.frozen_prefix``).

With LoRA on the last N decoder layers only (``lora.last_layers``), the layers below them never change, so
an item prompt's hidden states after those layers are a constant of the run. They are computed once per
item (no grad, ~65 tokens x H each) and every later item encoding — the item-table refresh and the item side of
the training losses — runs only the adapted layers on them: on SmolLM2 with 6 of 30 layers adapted that is a
fifth of an item forward. The result equals a full forward up to float rounding (checked on the first batch
when the cache is built; a backbone on which it does not hold falls back to full forwards with a warning).
"""

from __future__ import annotations

import contextlib
import logging
import pickle

import torch

log = logging.getLogger(__name__)


def first_adapted_layer(model) -> int:
    """Index of the lowest decoder layer holding a trainable parameter (= the layer count if none does)."""
    from r2ec.llm.encoder import decoder_of
    layers = decoder_of(model).layers
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


@contextlib.contextmanager
def layer_range(model, start: int, stop: int | None, final_norm: bool):
    """Run only decoder layers ``[start, stop)`` (and the final norm if ``final_norm``) inside the block.

    The decoder's own forward still builds the causal mask and rotary embeddings from the positions it is given,
    so a slice of layers sees exactly what it sees inside a full forward. Decoders that pick each layer's mask by
    its index in ``config.layer_types`` (Gemma-2's alternating sliding-window and full layers) get that list
    sliced alike, so that a layer keeps its own mask.
    """
    from r2ec.llm.encoder import decoder_of
    dec = decoder_of(model)
    layers, norm = dec.layers, dec.norm
    cfg = dec.config
    types = getattr(cfg, "layer_types", None)
    dec.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if types is not None:
        cfg.layer_types = list(types)[start:stop]
    if not final_norm:
        dec.norm = torch.nn.Identity()
    try:
        yield dec
    finally:
        dec.layers, dec.norm = layers, norm
        if types is not None:
            cfg.layer_types = types


def _pad_states(states: list[torch.Tensor], dtype, device) -> torch.Tensor:
    T = max(int(s.shape[0]) for s in states)
    out = torch.zeros((len(states), T, states[0].shape[1]), dtype=dtype, device=device)
    for i, s in enumerate(states):
        out[i, T - s.shape[0]:] = s.to(device, dtype)
    return out


def adapted_hidden(model, split: int, states: list[torch.Tensor], mask: torch.Tensor,
                   pos: torch.Tensor) -> torch.Tensor:
    """Last hidden state ``[B, T, H]`` (final norm included) of the adapted layers ``[split, N)`` run on per-row
    states after the frozen layers, left-padded to the longest (``mask`` / ``pos`` of the same left-padded ids);
    gradient flows into the adapted layers when enabled."""
    from r2ec.llm.encoder import decoder_of
    dec = decoder_of(model)
    w = dec.embed_tokens.weight
    h0 = _pad_states(states, w.dtype, w.device)
    with layer_range(model, split, None, final_norm=True):
        return dec(inputs_embeds=h0, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state


class FrozenPrefix:
    """Per-item hidden states after the frozen layers ``[0, split)`` and the adapted-layer forward on them."""

    def __init__(self, model, split: int, prompts: list[list[int]], answer_id: int, pad_id: int,
                 batch_size: int = 16, states: list[torch.Tensor] | None = None):
        """``model`` computes the frozen layers (any model with the same bottom layers: the policy or its merged
        copy); ``split`` = :func:`first_adapted_layer` of the policy. ``states``: per-prompt states saved by an
        earlier build (:meth:`save`); they are checked against a full forward like fresh ones."""
        self.split = split
        self.answer_id, self.pad_id, self.prompts = answer_id, pad_id, prompts
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        if states is not None:
            if len(states) != len(prompts) or any(int(h.shape[0]) != len(q) for h, q in zip(states, prompts)):
                raise ValueError("frozen prefix: the saved states do not match the item prompts")
            self.states = list(states)
        else:
            self._build(model, order, batch_size)
        self.ok = self._agrees(model, order[:min(batch_size, len(order))])

    def save(self, path) -> None:
        """Write the states (atomically) so that later runs on the same backbone and items skip the build."""
        from pathlib import Path
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"split": self.split, "states": self.states}, tmp)
        tmp.replace(path)

    @staticmethod
    def load_states(path, split: int) -> list[torch.Tensor] | None:
        """States saved by :meth:`save` for layer ``split``, or None (absent, unreadable or another split)."""
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            if path.exists():
                log.warning("%s: unreadable frozen-prefix cache (%s); rebuilding", path, e)
            return None
        return st["states"] if st.get("split") == split else None

    def _build(self, model, order: list[int], batch_size: int) -> None:
        from r2ec.llm.encoder import decoder_of, pad_left
        prompts, pad_id = self.prompts, self.pad_id
        self.states: list[torch.Tensor] = [None] * len(prompts)  # type: ignore[list-item]
        dec = decoder_of(model)
        dev = dec.embed_tokens.weight.device
        with torch.no_grad(), layer_range(model, 0, self.split, final_norm=False):
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                ids, mask, pos = pad_left([prompts[i] for i in idx], pad_id, dev)
                h = dec(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
                for j, i in enumerate(idx):
                    n = len(prompts[i])
                    self.states[i] = h[j, h.shape[1] - n:].detach().cpu().clone()

    def _agrees(self, model, idx: list[int]) -> bool:
        from r2ec.llm.encoder import hidden_at_answer
        if not idx:
            return True
        with torch.no_grad():
            full = hidden_at_answer(model, [self.prompts[i] for i in idx], self.answer_id, self.pad_id,
                                    len(idx)).float()
            fast = self.vectors(model, idx).float()
        err = float((full - fast).abs().max() / full.abs().max().clamp_min(1e-6))
        if err > 2e-2:
            log.warning("frozen prefix disagrees with a full forward (relative error %.3g): not used", err)
            return False
        return True

    def vectors(self, model, idx: list[int]) -> torch.Tensor:
        """``[len(idx), H]`` hidden states at ``<answer>`` of items ``idx`` (0-based prompt indices) under
        ``model``'s current adapted layers; gradient flows when enabled by the caller."""
        from r2ec.llm.encoder import decoder_of, pad_left
        from r2ec.llm.pooling import pool_at_last
        dev = decoder_of(model).embed_tokens.weight.device
        ids, mask, pos = pad_left([self.prompts[i] for i in idx], self.pad_id, dev)
        h = adapted_hidden(model, self.split, [self.states[i] for i in idx], mask, pos)
        return pool_at_last(h, ids, self.answer_id)

    def table(self, model, batch_size: int = 16, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """Item table ``[N+1, H]`` float32 on CPU (row 0 = pad) under ``model``'s adapted layers (no grad);
        ``shard=(rank, n)``: only the batches ``b % n == rank`` (see :func:`r2ec.llm.encoder.encode_items`)."""
        H = self.states[0].shape[1]
        out = torch.zeros((len(self.prompts) + 1, H), dtype=torch.float32)
        order = sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i]))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                for b, s in enumerate(range(0, len(order), batch_size)):
                    if shard is not None and b % shard[1] != shard[0]:
                        continue
                    idx = order[s:s + batch_size]
                    out[torch.as_tensor(idx) + 1] = self.vectors(model, idx).float().cpu()
        finally:
            model.train(was)
        return out
