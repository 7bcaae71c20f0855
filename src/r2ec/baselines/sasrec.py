"""SASRec (Kang & McAuley, ICDM 2018) with a full-softmax cross-entropy head.

Layout follows RecBole 1.2.1's ``SASRec`` (itself a port of the authors' model): item embedding + learned
absolute position embedding -> LayerNorm -> dropout -> ``layers`` Transformer blocks. Each block is
post-LN as in RecBole: ``LN(x + Dropout(MHA(x)))`` then ``LN(h + Dropout(FFN(h)))`` with a GELU point-wise
FFN of inner size 4 * hidden. Attention is causal and ignores padded keys. Histories are left-padded, as in
the authors' TensorFlow code, so the most recent item always sits at the last position ``L - 1`` and its
output is the sequence representation. Weights are initialised as in RecBole (normal(0, 0.02)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, inner: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ff1 = nn.Linear(hidden, inner)
        self.ff2 = nn.Linear(inner, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x: [B, L, d]; mask: [B, 1, L, L] additive. With ``last_only`` only the last position's output is
        computed ([B, 1, d]) - all the next block or the head needs, and identical to slicing the full output."""
        b, length, d = x.shape
        hd = d // self.heads
        k, v = self.kv(x).view(b, length, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # each [B, H, L, hd]
        if last_only:
            x, mask = x[:, -1:], mask[:, :, -1:]
        q = self.q(x).view(b, x.shape[1], self.heads, hd).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # [B, H, Lq, hd]
        a = a.transpose(1, 2).reshape(b, x.shape[1], d)
        h = self.ln1(x + F.dropout(self.attn_out(a), p, self.training))
        f = self.ff2(F.gelu(self.ff1(h)))
        return self.ln2(h + F.dropout(f, p, self.training))


class SASRec(nn.Module):
    """``forward(hist [B, L], users [B]) -> [B, hidden]``; ``item_emb`` scores items by dot product."""

    def __init__(self, n_items: int, max_len: int, hidden: int = 64, layers: int = 2, heads: int = 1,
                 dropout: float = 0.2, inner: int | None = None):
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, dropout, inner or 4 * hidden) for _ in range(layers))
        self.apply(self._init)
        self.causal = nn.Buffer(torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)), persistent=False)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(0.0, 0.02)
        if isinstance(m, nn.LayerNorm):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()

    def forward(self, hist: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        b, length = hist.shape
        if length != self.max_len:
            raise ValueError(f"history width {length} != max_len {self.max_len}")
        pos = torch.arange(length, device=hist.device)
        x = self.emb_dropout(self.ln(self.item_emb(hist) + self.pos_emb(pos)))
        allowed = self.causal.unsqueeze(0) & (hist > 0).unsqueeze(1)  # [B, L(query), L(key)]
        # RecBole's additive -10000 mask: a fully padded query row stays finite (its output is never used).
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed, -10000.0)
        mask = mask.unsqueeze(1)
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask, last_only=i == len(self.blocks) - 1)
        return x[:, -1]

