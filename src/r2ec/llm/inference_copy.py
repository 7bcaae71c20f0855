"""A merged, low-precision copy of the policy for every no-grad pass (rollouts, evaluation, item tables).

Why: on CPU the training policy (float32 master weights + unmerged LoRA, run under bf16 autocast) pays at
every op for re-casting float32 weights to bf16 and for the LoRA side path (two extra matmuls per adapted
linear). Measured on SmolLM2-135M, 2 threads: autocast decoding ≈ 0.2 s per step for 16 sequences, a merged
bf16 copy ≈ 0.11 s; item encoding 28 -> 47 items/s. The copy holds ``W + scale·B·A`` of every adapted linear,
re-merged from the float32 masters whenever the policy changed (never accumulated, so no drift), and the LM
head computes on a 2-D view (a 3-D bf16 ``linear`` takes a slow batched path on CPU) and returns float32
logits.

Precision: with ``bf16=True`` everything runs in bfloat16 (no autocast): the item/user vectors agree with the
float32 model to cosine 0.9998 (autocast: 0.9999). The training forward (new and old log-probs, the reward's
user vectors) stays on the policy, so PPO ratios are computed on one model.
"""

from __future__ import annotations

import copy

import torch


class _FlatHead(torch.nn.Module):
    """LM head on a 2-D view of the hidden states, float32 logits out (shares the copy's weight)."""

    def __init__(self, weight: torch.nn.Parameter):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]).to(self.weight.dtype), self.weight)
        return y.view(*x.shape[:-1], -1).float()


class InferenceCopy:
    """Merged copy of a PEFT LoRA policy (or a plain model) in bf16 or the policy's own dtype.

    :meth:`get` returns the copy, refreshed from ``policy`` when ``version`` differs from the one it was last
    merged at (the trainer bumps its version after every optimizer step and every state load).
    """

    def __init__(self, policy, *, bf16: bool):
        self.bf16 = bf16
        src = copy.deepcopy(policy)
        if hasattr(src, "r2ec_cls_head"):  # the classification head scores outside the decoder
            del src.r2ec_cls_head
        self.pairs: list[tuple[torch.nn.Module, torch.nn.Linear]] = []
        if hasattr(src, "merge_and_unload"):
            model = src.merge_and_unload()
            mods = dict(model.named_modules())
            for name, mod in policy.named_modules():
                if hasattr(mod, "get_delta_weight") and hasattr(mod, "base_layer"):
                    key = name.removeprefix("base_model.model.")
                    self.pairs.append((mod, mods[key]))
        else:
            model = src
        if bf16:
            model = model.to(torch.bfloat16)
            head = model.get_output_embeddings()
            if head is not None and isinstance(head, torch.nn.Linear) and head.bias is None:
                model.set_output_embeddings(_FlatHead(head.weight))
        model.eval()
        for q in model.parameters():
            q.requires_grad_(False)
        self.model = model
        self.version: object = None

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-merge every adapted linear from the policy's float32 base weight and current LoRA factors."""
        for lora, lin in self.pairs:
            w = lora.base_layer.weight.float()
            for name in lora.active_adapters:
                if name in lora.lora_A:
                    w = w + lora.get_delta_weight(name).float()
            lin.weight.copy_(w.to(lin.weight.dtype))

    def get(self, version: object):
        if version != self.version:
            self.refresh()
            self.version = version
        return self.model
