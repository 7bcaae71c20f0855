"""GRU4Rec (Hidasi et al., ICLR 2016) in RecBole 1.2.1's form, with a full-softmax cross-entropy head.

item embedding -> dropout -> ``layers``-layer GRU (no bias, as in RecBole) -> last hidden state -> linear
projection back to the embedding space, scored against the item embeddings by dot product. Init as RecBole:
xavier-normal embeddings, xavier-uniform GRU weights.

Histories are left-padded. The pad row of the embedding is kept at zero and the GRU has no bias, so a zero
input leaves a zero hidden state unchanged: the leading pads are exactly a no-op and the output at the last
position equals RecBole's right-padded ``gather(item_seq_len - 1)``.
"""

from __future__ import annotations

import torch
from torch import nn


class GRU4Rec(nn.Module):
    """``forward(hist [B, L], users [B]) -> [B, hidden]``; ``item_emb`` scores items by dot product."""

    def __init__(self, n_items: int, hidden: int = 64, layers: int = 1, dropout: float = 0.2):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, bias=False, batch_first=True)
        self.dense = nn.Linear(hidden, hidden)
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for name, w in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(w)

    def forward(self, hist: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.gru(self.emb_dropout(self.item_emb(hist)))  # [B, L, hidden]
        return self.dense(out[:, -1])
