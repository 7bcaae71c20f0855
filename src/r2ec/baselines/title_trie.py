"""Title generation machinery shared by BigRec and D3: the response format, a prefix trie over the catalogue's
tokenised titles, a batched beam search (free or trie-constrained) and D3's text-free assistant.

Response format (BigRec / D3): the target title in double quotes, then EOS::

    "Toy Story (1995)"<eos>

tokenised on its own (never merged with the prompt's last token), so training, the trie and decoding see the
same ids. A title is quoted, so even an empty title has a non-empty response; items sharing a title share one
trie leaf (the leaf lists all of them).

Beam search (:func:`beam_search`) follows transformers' beam search: per sample, the top ``2 * num_beams``
continuations of all live beams are ranked; EOS continuations among the first ``num_beams`` become finished
hypotheses (score = sum of token log-probs / generated_length ** ``length_penalty``, EOS counted), the others
fill the next ``num_beams`` live beams. A sample is done when ``num_beams`` hypotheses are finished and none of
its live beams can still beat the worst of them, when no live beam is left, or after ``max_new_tokens``.
With ``length_penalty=0`` (D3) the stopping rule is exact (token scores are <= 0), so a beam at least as wide as
the number of titles returns the exact ranking of every title. Constrained decoding masks every token that
does not continue a title; token scores are the model's unrenormalised log-probs (``log_softmax`` before the
mask, as transformers' beam search and D3's code). One forward per step serves all live beams of all samples
(KV cache reordered in place), on whatever model it is given (the merged inference copy in practice).

D3's text-free assistant (:func:`assistant_mass`): a recommender's next-item distribution ``p`` is aggregated
per trie node (sum, or max as in D3's code, of ``p`` over the items below the node); the assistant's
log-prob of a continuation is its node mass normalised over the allowed continuations of the same beam, and
the token score becomes ``(1 - gamma) * logp_LLM + gamma * logp_assistant`` (D3's ``guidance_scale`` is
``1 - gamma``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from r2ec.llm.encoder import pad_left


def response_ids(tokenizer, title: str, eos_id: int) -> list[int]:
    """Ids of the response that names ``title``: ``"title"`` tokenised alone, then EOS."""
    return list(tokenizer.encode(f'"{title}"', add_special_tokens=False)) + [int(eos_id)]


def response_text(tokenizer, ids: Sequence[int], eos_id: int) -> str:
    """The title a generated response names: decoded up to EOS, one pair of surrounding quotes removed."""
    ids = list(ids)
    if eos_id in ids:
        ids = ids[:ids.index(eos_id)]
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return text


class TitleTrie:
    """Prefix trie over token sequences (each ending in EOS) that name items.

    Node 0 is the root; the node reached by a sequence's final token (EOS) is its leaf and lists the item ids of
    every title with that exact sequence (duplicates). ``title_paths[t]`` are the nodes of distinct sequence
    ``t`` (root excluded), ``title_items[t]`` its items.
    """

    def __init__(self, sequences: Sequence[Sequence[int]], item_ids: Sequence[int]):
        if len(sequences) != len(item_ids):
            raise ValueError(f"{len(sequences)} sequences for {len(item_ids)} items")
        kids: list[dict[int, int]] = [{}]
        seq_index: dict[tuple[int, ...], int] = {}
        leaves: set[int] = set()
        self.title_paths: list[list[int]] = []
        self.title_items: list[list[int]] = []
        for seq, item in zip(sequences, item_ids):
            key = tuple(int(t) for t in seq)
            if not key:
                raise ValueError(f"item {item}: empty token sequence (a response always ends with EOS)")
            if key in seq_index:
                self.title_items[seq_index[key]].append(int(item))
                continue
            node, path = 0, []
            for t in key:
                if node in leaves:
                    raise ValueError(f"item {item}: another sequence is a prefix of its one (each must end in EOS)")
                nxt = kids[node].get(t)
                if nxt is None:
                    nxt = len(kids)
                    kids[node][t] = nxt
                    kids.append({})
                node = nxt
                path.append(node)
            if kids[node]:
                raise ValueError(f"item {item}: its sequence is a prefix of another one (it must end in EOS)")
            leaves.add(node)
            seq_index[key] = len(self.title_paths)
            self.title_paths.append(path)
            self.title_items.append([int(item)])
        self.n_nodes = len(kids)
        self._seq_index = seq_index
        self.child_tok = [torch.tensor(list(k.keys()), dtype=torch.long) for k in kids]
        self.child_node = [torch.tensor(list(k.values()), dtype=torch.long) for k in kids]
        self.leaf_title = {path[-1]: t for t, path in enumerate(self.title_paths)}
        # number of distinct titles below each node (a node whose titles are all excluded is dead)
        count = torch.zeros(self.n_nodes, dtype=torch.long)
        for path in self.title_paths:
            count[torch.tensor(path)] += 1
        self.title_count = count
        self.item_title = {i: t for t, items in enumerate(self.title_items) for i in items}
        self.max_len = max((len(p) for p in self.title_paths), default=0)

    def items_of(self, seq: Sequence[int]) -> list[int] | None:
        """Items named by the complete sequence ``seq`` (ending in EOS), or None when it names none."""
        t = self._seq_index.get(tuple(int(x) for x in seq))
        return None if t is None else list(self.title_items[t])

    def dead_nodes(self, excluded_items: Sequence[int]) -> torch.Tensor:
        """Nodes all of whose titles consist of excluded items only (decoding must not enter them)."""
        ex = set(int(i) for i in excluded_items)
        banned = torch.zeros(self.n_nodes, dtype=torch.long)
        for t in {self.item_title[i] for i in ex if i in self.item_title}:
            if all(i in ex for i in self.title_items[t]):
                banned[torch.tensor(self.title_paths[t])] += 1
        return ((banned == self.title_count) & (banned > 0)).nonzero().flatten()

    def incidence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(node, item)`` pairs: every item below every node (root excluded)."""
        nodes, items = [], []
        for path, its in zip(self.title_paths, self.title_items):
            for i in its:
                nodes.extend(path)
                items.extend([i] * len(path))
        return torch.tensor(nodes, dtype=torch.long), torch.tensor(items, dtype=torch.long)


def build_title_trie(tokenizer, titles: Sequence[str], item_ids: Sequence[int], eos_id: int) -> TitleTrie:
    return TitleTrie([response_ids(tokenizer, t, eos_id) for t in titles], item_ids)


def assistant_mass(trie: TitleTrie, probs: torch.Tensor, aggregate: str = "sum") -> torch.Tensor:
    """``[B, n_nodes]`` mass of a next-item distribution ``probs`` ``[B, N + 1]`` (column 0 unused) per node:
    the sum (or max) of the probabilities of the items below the node."""
    nodes, items = trie.incidence()
    vals = probs[:, items].float()
    out = torch.zeros(probs.shape[0], trie.n_nodes, dtype=torch.float32)
    idx = nodes.unsqueeze(0).expand_as(vals)
    if aggregate == "sum":
        return out.scatter_add_(1, idx, vals)
    if aggregate == "max":
        return out.scatter_reduce_(1, idx, vals, reduce="amax", include_self=False)
    raise ValueError(f"aggregate {aggregate!r}: use 'sum' or 'max'")


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, EOS included when the hypothesis finished
    score: float  # sum of token scores / len(tokens) ** length_penalty
    finished: bool


def _forward(model, ids, mask, pos, cache):
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1), out.past_key_values


@torch.no_grad()
def beam_search(model, prompts: Sequence[Sequence[int]], *, num_beams: int, max_new_tokens: int, eos_id: int,
                pad_id: int, length_penalty: float = 1.0, trie: TitleTrie | None = None,
                dead: Sequence[torch.Tensor] | None = None, mass: torch.Tensor | None = None,
                gamma: float = 0.0) -> list[list[Hypothesis]]:
    """Beam search for every prompt at once (see the module docstring).

    ``trie``: constrain to its sequences; ``dead[b]``: trie nodes sample ``b`` must not enter; ``mass``
    ``[B, n_nodes]`` with ``gamma > 0``: D3's assistant. Returns per prompt its hypotheses, best first:
    the finished ones (at most ``num_beams``), or, when none finished, the live beams at the end.
    """
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    B, nb = len(prompts), num_beams
    ids, mask, pos = pad_left([list(p) for p in prompts], pad_id, dev)
    # no padding (one prompt, or equal lengths): no mask, so attention takes the fast grouped-query path
    padded = bool((mask == 0).any())
    logp, cache = _forward(model, ids, mask if padded else None, pos, DynamicCache())
    # live rows: their sample, summed score, trie node, tokens
    r_sample = torch.arange(B)
    r_score = torch.zeros(B)
    r_node = torch.zeros(B, dtype=torch.long)
    r_tokens: list[list[int]] = [[] for _ in range(B)]
    r_pos = pos[:, -1].cpu()
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    dead_of = [d.long() for d in dead] if dead is not None else None
    use_mass = trie is not None and mass is not None and gamma > 0
    for t in range(max_new_tokens):
        logp = logp.cpu()
        # candidate continuations (row, token, next node, token score)
        if trie is None:
            k = min(2 * nb, logp.shape[1])
            top = logp.topk(k, dim=1)
            c_row = torch.arange(logp.shape[0]).repeat_interleave(k)
            c_tok = top.indices.flatten()
            c_node = torch.full_like(c_tok, -1)
            c_val = top.values.flatten()
        else:
            rows, toks, nodes = [], [], []
            for r in range(logp.shape[0]):
                ct, cn = trie.child_tok[int(r_node[r])], trie.child_node[int(r_node[r])]
                if dead_of is not None and dead_of[int(r_sample[r])].numel():
                    keep = ~torch.isin(cn, dead_of[int(r_sample[r])])
                    ct, cn = ct[keep], cn[keep]
                rows.append(torch.full((ct.numel(),), r, dtype=torch.long))
                toks.append(ct)
                nodes.append(cn)
            c_row, c_tok, c_node = torch.cat(rows), torch.cat(toks), torch.cat(nodes)
            c_val = logp[c_row, c_tok]
            if use_mass:
                m = mass[r_sample[c_row], c_node] + 1e-10
                denom = torch.zeros(logp.shape[0]).index_add_(0, c_row, m)
                c_val = (1.0 - gamma) * c_val + gamma * torch.log(m / denom[c_row])
        c_score = r_score[c_row] + c_val
        c_sample = r_sample[c_row]
        # per sample: rank its candidates, finish EOS ones, keep num_beams live ones
        new_rows: list[int] = []
        new_tok: list[int] = []
        new_node: list[int] = []
        new_score: list[float] = []
        for b in range(B):
            if done[b]:
                continue
            sel = (c_sample == b).nonzero().flatten()
            if sel.numel() == 0:
                done[b] = True
                continue
            order = sel[c_score[sel].argsort(descending=True, stable=True)][:2 * nb]
            n_live = 0
            best_live = None
            for rank, c in enumerate(order.tolist()):
                tok, row, sc = int(c_tok[c]), int(c_row[c]), float(c_score[c])
                if tok == eos_id:
                    if rank < nb:
                        finished[b].append(Hypothesis(r_tokens[row] + [tok], sc / (t + 1) ** length_penalty, True))
                    continue
                if n_live < nb:
                    new_rows.append(row)
                    new_tok.append(tok)
                    new_node.append(int(c_node[c]))
                    new_score.append(sc)
                    best_live = sc if best_live is None else max(best_live, sc)
                    n_live += 1
            finished[b].sort(key=lambda h: -h.score)
            del finished[b][nb:]
            if n_live == 0:
                done[b] = True
            elif len(finished[b]) >= nb:
                bound = best_live if length_penalty <= 0 else best_live / (t + 1) ** length_penalty
                if finished[b][-1].score >= bound:
                    done[b] = True
            if done[b]:  # drop this sample's rows again
                while new_rows and int(r_sample[new_rows[-1]]) == b:
                    new_rows.pop(), new_tok.pop(), new_node.pop(), new_score.pop()
        src = torch.tensor(new_rows, dtype=torch.long)
        r_tokens = [r_tokens[r] + [tk] for r, tk in zip(new_rows, new_tok)]
        r_sample, r_score = r_sample[src], torch.tensor(new_score)
        r_node = torch.tensor(new_node, dtype=torch.long)
        if not new_rows or t == max_new_tokens - 1:
            break
        r_pos = r_pos[src] + 1
        cache.reorder_cache(src.to(dev))
        mask = torch.cat([mask[src.to(dev)], torch.ones((len(new_rows), 1), dtype=mask.dtype, device=dev)], 1)
        logp, cache = _forward(model, torch.tensor(new_tok, device=dev).view(-1, 1), mask if padded else None,
                               r_pos.view(-1, 1).to(dev), cache)
    out: list[list[Hypothesis]] = []
    for b in range(B):
        if finished[b]:
            out.append(finished[b])
            continue
        live = [Hypothesis(r_tokens[r], float(r_score[r]), False) for r in range(len(r_tokens))
                if int(r_sample[r]) == b]
        out.append(sorted(live, key=lambda h: -h.score))
    return out
