"""``python -m r2ec recommend --run DIR --history "a; b; c"``: reasoning + top-k items for a title history.

Reads the run directory written by the RecPO trainer (interface B4)::

    run_dir/config.json          resolved params (Params), optionally with {"run": {"method": ...}}
    run_dir/best/adapter/        PEFT LoRA of the selected model (absent for zero-shot)
    run_dir/best/item_table.pt   item table [N+1, H] (re-encoded here when absent)
    run_dir/best/head.pt         r2ec_cls_head only: state dict of Linear(H, N+1) (weight, bias)

Run directories follow ``results/runs/{dataset}/{method}/``; the dataset is read from
``results/data/{dataset}/`` and the backbone copy from ``results/cache/backbones/<name>/`` unless
``data_dir`` / ``cache_dir`` are given. History titles are matched to catalogue titles (exact, then
case-insensitive, then closest by difflib); ratings default to 5.0 and the history is presented as one
interaction per day before now.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _norm(t: str) -> str:
    import re
    t = re.sub(r"\s*\([^()]*\)\s*$", "", t.strip().lower())  # a trailing "(1995)" / "(Remastered)"
    return re.sub(r"\s+", " ", t)


def match_titles(titles: list[str], catalogue: list[str]) -> list[int]:
    """0-based catalogue index per title: exact, case-insensitive, without a trailing parenthetical, then the
    closest by difflib (cutoff 0.6); -1 when nothing is close. Ties go to the first catalogue entry."""
    exact: dict[str, int] = {}
    lower: dict[str, int] = {}
    norm: dict[str, int] = {}
    for i, t in enumerate(catalogue):
        exact.setdefault(t, i)
        lower.setdefault(t.lower(), i)
        norm.setdefault(_norm(t), i)
    out = []
    for t in titles:
        if t in exact:
            out.append(exact[t])
        elif t.lower() in lower:
            out.append(lower[t.lower()])
        elif _norm(t) in norm:
            out.append(norm[_norm(t)])
        else:
            close = difflib.get_close_matches(_norm(t), list(norm), n=1, cutoff=0.6)
            out.append(norm[close[0]] if close else -1)
    return out


def _default_dirs(run_dir: Path, backbone: str) -> tuple[Path, Path]:
    from r2ec.llm.backbone import backbone_cache_name
    dataset, results = run_dir.parent.name, run_dir.parent.parent.parent
    return results / "data" / dataset, results / "cache" / "backbones" / backbone_cache_name(backbone)


def recommend(run_dir: Path, history_titles: list[str], k: int = 10, *, data_dir: Path | None = None,
              cache_dir: Path | None = None, ratings: list[float] | None = None,
              max_reasoning_tokens: int | None = None) -> dict:
    """``{"reasoning": str, "items": [(item_id, title, score)], "matched": [(title, item_id|None)]}``.

    Greedy reasoning (temperature 0) from the prompt, user vector at ``<answer>``, cosine/τ against the item
    table (or the run's readout, or the classification head) plus the run's popularity prior, history items masked. On a LangPTune run
    the greedy profile (also under ``"profile"``) is embedded by the run's retriever and scored against its item
    table instead.
    """
    import polars as pl

    from r2ec import config as C
    from r2ec.llm.backbone import answer_token_id, autocast_ctx, load_backbone
    from r2ec.llm.encoder import encode_items, load_item_table
    from r2ec.llm.prompts import display_title, domain_noun, render_prompt, user_messages
    from r2ec.llm.rollout import HFRolloutEngine, completion_logprobs
    from r2ec.model.head import RecHead

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.json"
    if not cfg_file.exists():
        raise C.ConfigError(f"{cfg_file}: not found (is {run_dir} a trained R2ec run directory?)")
    raw = json.loads(cfg_file.read_text())
    if not isinstance(raw, dict):
        raise C.ConfigError(f"{cfg_file}: expected a JSON object")
    praw = raw["params"] if isinstance(raw.get("params"), dict) else raw
    import dataclasses
    fields = {f.name for f in dataclasses.fields(C.Params)}
    params = C.from_dict({k: v for k, v in praw.items() if k in fields}, str(cfg_file))
    run_info = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    method = next((m for m in (raw.get("method"), run_info.get("method")) if isinstance(m, str)), run_dir.name)
    d_data, d_cache = _default_dirs(run_dir, params.llm.backbone)
    data_dir = Path(data_dir) if data_dir is not None else d_data
    cache_dir = Path(cache_dir) if cache_dir is not None else d_cache
    items_file = data_dir / "items.parquet"
    if not items_file.exists():
        raise C.ConfigError(f"{items_file}: not found; pass data_dir (the prepared dataset of this run)")
    items = pl.read_parquet(items_file)
    titles = items["title"].to_list()
    domain = domain_noun(data_dir.name)

    model, tok = load_backbone(params.llm, cache_dir)
    adapter = run_dir / "best" / "adapter"
    if adapter.exists():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    aid = answer_token_id(tok)

    idx = match_titles(history_titles, titles)
    matched = [(t, (i + 1) if i >= 0 else None) for t, i in zip(history_titles, idx)]
    hist_ids = [i + 1 for i in idx if i >= 0]
    now = 1_700_000_000
    n = len(history_titles)
    rs = ratings if ratings is not None else [5.0] * n
    history = [{"title": display_title(items.row(i, named=True)) if i >= 0 else t, "rating": r,
                "timestamp": now - (n - j) * 86400} for j, (t, i, r) in enumerate(zip(history_titles, idx, rs))]
    if method == "langptune":  # a profile instead of reasoning, scored by the run's retriever
        from r2ec.baselines.langptune import recommend_profile
        profile, scores = recommend_profile(run_dir, params, model, tok,
                                            user_messages(history, now, domain, task="profile"), items)
        scores = _with_prior(scores, data_dir, items.height, params.langptune.popularity_prior,
                             "langptune.popularity_prior")
        return {"reasoning": profile, "profile": profile, "items": _top_items(scores, hist_ids, titles, k),
                "matched": matched}
    prompt = render_prompt(tok, user_messages(history, now, domain), params.llm.system_prompt,
                           max_tokens=params.llm.max_prompt_tokens)

    dev = next(model.parameters()).device
    no_reasoning = method == "r2ec_no_reasoning"
    if no_reasoning:
        completion, user = [aid], None
    else:
        eng = HFRolloutEngine(model, tok, aid)
        mx = max_reasoning_tokens or params.recpo.max_reasoning_tokens
        # one sequence: decoded without autocast (re-casting weights per token made batch-1 decoding 1.9x slower);
        # the user vector is the <answer> state off the generation's KV cache (no second pass) when it has one
        traj = eng.generate([prompt], 1, 0.0, 0, mx, seed=params.recpo.seed, old_logprobs=False,
                            answer_hidden=True)[0][0]
        completion, user = traj.completion_ids, traj.answer_hidden
    if user is None:
        with torch.no_grad(), autocast_ctx(params.llm, dev):
            _, user = completion_logprobs(model, [(prompt, completion)], 1.0, pad_id=tok.pad_token_id,
                                          return_hidden=True, answer_id=aid)
    else:
        user = user[None]
    user = user.float()
    head_file = run_dir / "best" / "head.pt"
    table = readout = cls = None
    if head_file.exists():
        sd = torch.load(head_file, map_location="cpu", weights_only=True)
        cls = torch.nn.Linear(sd["weight"].shape[1], sd["weight"].shape[0], bias="bias" in sd)
        cls.load_state_dict(sd)
    else:
        table_file = run_dir / "best" / "item_table.pt"
        if table_file.exists():
            table, _ = load_item_table(table_file)
        else:
            log.info("no item table in %s: encoding %d items", run_dir / "best", items.height)
            with autocast_ctx(params.llm, dev):
                table = encode_items(model, tok, items, domain, params.llm, batch_size=16)
        readout_file = run_dir / "best" / "readout.pt"
        if readout_file.exists():  # the run's learned readout replaces the cosine (r2ec.model.readout)
            from r2ec.model.readout import Readout
            sd = torch.load(readout_file, map_location="cpu", weights_only=True)
            readout = Readout(sd["proj"].shape[0], sd["proj"].shape[1], 0, user_map="user_proj" in sd)
            readout.load_state_dict(sd)
    prior = _prior(data_dir, items.height, params.recpo.popularity_prior, "recpo.popularity_prior")
    with torch.no_grad():  # the one scoring head of training and evaluation (r2ec.model.head)
        scores = RecHead(params.recpo.tau, lambda: table, readout, cls, lambda: prior).scores(user)
    reasoning = tok.decode(completion[:-1], skip_special_tokens=True)
    return {"reasoning": reasoning, "items": _top_items(scores[0], hist_ids, titles, k), "matched": matched}


def _prior(data_dir: Path, n_items: int, weight: float, key: str) -> torch.Tensor | None:
    """``[N+1]`` popularity prior the run trained and was evaluated with (from ``data_dir/train.parquet``); None
    when ``weight`` is 0."""
    if weight <= 0:
        return None
    import polars as pl

    from r2ec import config as C
    from r2ec.data.popularity import log_popularity_prior
    train_file = data_dir / "train.parquet"
    if not train_file.exists():
        raise C.ConfigError(f"{train_file}: not found; {key} needs the run's train split")
    return log_popularity_prior(pl.read_parquet(train_file), n_items, weight)


def _with_prior(scores: torch.Tensor, data_dir: Path, n_items: int, weight: float, key: str) -> torch.Tensor:
    """``scores`` (``[N+1]`` or ``[B, N+1]``) plus the popularity prior (:func:`_prior`); unchanged when it is off."""
    lp = _prior(data_dir, n_items, weight, key)
    return scores if lp is None else scores + lp


def _top_items(scores: torch.Tensor, hist_ids: list[int], titles: list[str], k: int) -> list[tuple[int, str, float]]:
    """``(item_id, title, score)`` of the ``k`` best items of ``[N+1]`` scores, history items left out."""
    scores = scores.clone()
    if hist_ids:
        scores[torch.as_tensor(hist_ids)] = float("-inf")
    top = torch.topk(scores, min(k, len(titles) - len(set(hist_ids))))
    return [(int(i), titles[int(i) - 1], float(s)) for s, i in zip(top.values, top.indices)]
