"""User and item prompts (DESIGN.md §4, reference wording) and chat rendering.

User prompt::

    Analyze in depth and finally recommend next {singular} I might purchase inside <answer> and </answer>.
    For example, <answer>a product</answer>.

    Below is my historical {plural} purchases and ratings (out of 5):
    3 days ago: [Title A] (4.0)
    ...

``{plural}``/``{singular}`` follow the reference code's category table (Video_Games → "video games" /
"video game", ...); MovieLens → "movies" / "movie"; other Amazon categories → "products" / "product".
``domain`` may be a dataset name or a singular noun ("movie", "product").

Item prompt (assistant turn is literally ``<answer>``)::

    Summarize key attributes of the following {singular} inside <answer> and </answer>.
    Title: ...
    User Rating: 4.3
    Number of Buyers: 1234
    Description: ... (at most 100 words)

Δt is the time from the history interaction to the target interaction. Timestamps may be seconds (MovieLens)
or milliseconds (Amazon 2023); ``ts_unit="auto"`` treats values above 1e11 as milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from r2ec.llm.backbone import ANSWER

log = logging.getLogger(__name__)

_MS_THRESHOLD = 1e11  # unix seconds stay below this until the year 5138


# reference code (prompters/prompts.py): category -> (plural, singular)
CATEGORY_NOUNS = {
    "Video_Games": ("video games", "video game"),
    "CDs_and_Vinyl": ("CDs and vinyl", "CD or vinyl"),
    "Musical_Instruments": ("musical instruments", "musical instrument"),
}


def category_nouns(domain: str) -> tuple[str, str]:
    """``(plural, singular)`` item nouns for a dataset name or a singular noun."""
    if domain in CATEGORY_NOUNS:
        return CATEGORY_NOUNS[domain]
    for plural, singular in CATEGORY_NOUNS.values():
        if domain == singular:
            return plural, singular
    if "movielens" in domain.lower() or domain == "movie":
        return "movies", "movie"
    if domain and "_" not in domain and domain[:1].islower():  # a plain noun such as "book"
        return domain + "s", domain
    return "products", "product"


def domain_noun(dataset: str) -> str:
    """The singular item noun used in prompts ("movie" for MovieLens, "video game" for Video_Games, ...)."""
    return category_nouns(dataset)[1]


def _to_seconds(ts: float, unit: str) -> float:
    if unit == "s":
        return float(ts)
    if unit == "ms":
        return float(ts) / 1000.0
    return float(ts) / 1000.0 if abs(ts) > _MS_THRESHOLD else float(ts)


def humanize_delta(seconds: float) -> str:
    """``"3 days"``, ``"1 month"``, ``"2 years"``, ``"5 hours"``, ``"moments"`` (no suffix)."""
    s = max(0.0, float(seconds))
    units = (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
             ("hour", 3600), ("minute", 60))
    for name, size in units:
        if s >= size:
            n = int(s // size)
            return f"{n} {name}{'s' if n != 1 else ''}"
    return "moments"


def _fmt_rating(r: Any) -> str:
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "unknown"
    return f"{float(r):.1f}"


def profile_instruction(plural: str, singular: str) -> list[str]:
    """LangPTune's instruction (first lines of the user prompt): describe the user's taste as a profile."""
    return [f"Below are the {plural} I rated (out of 5), oldest first. Describe my {singular} preferences "
            f"(genres, themes, eras, what I like and dislike) as a short user profile."]


def user_messages(history: list[dict], target_ts: int, domain: str, *, ts_unit: str = "auto",
                  task: str = "recommend") -> list[dict]:
    """Chat messages of the user prompt. ``history``: chronological dicts with title, rating, timestamp.

    ``task="profile"`` replaces the recommendation instruction by :func:`profile_instruction` (LangPTune)."""
    unit = ts_unit
    if unit == "auto":
        probe = [h["timestamp"] for h in history] + [target_ts]
        unit = "ms" if max(abs(float(x)) for x in probe) > _MS_THRESHOLD else "s"
    t_target = _to_seconds(target_ts, unit)
    plural, singular = category_nouns(domain)
    lines = profile_instruction(plural, singular) + [""] if task == "profile" else [
        f"Analyze in depth and finally recommend next {singular} I might purchase inside <answer> and </answer>.",
        "For example, <answer>a product</answer>.",
        "",
        f"Below is my historical {plural} purchases and ratings (out of 5):",
    ]
    for h in history:
        dt = humanize_delta(t_target - _to_seconds(h["timestamp"], unit))
        ago = "Just now" if dt == "moments" else f"{dt} ago"
        lines.append(f"{ago}: [{h['title']}] ({_fmt_rating(h.get('rating'))})")
    return [{"role": "user", "content": "\n".join(lines)}]


def _words(text: str, n: int) -> str:
    w = str(text).split()
    return " ".join(w[:n]) + (" ..." if len(w) > n else "")


def _present(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    if isinstance(v, (list, tuple)):
        return len(v) > 0
    return str(v).strip() != ""


def item_messages(item: dict, domain: str, *, max_description_words: int = 100) -> list[dict]:
    """Chat messages of the item prompt. ``item``: a row of items.parquet as a dict (missing fields skipped).

    Uses title, genres, year, average_rating ("User Rating"), rating_number ("Number of Buyers",
    "Number of Ratings" for movies) and description (first ``max_description_words`` words).
    """
    singular = category_nouns(domain)[1]
    lines = [f"Summarize key attributes of the following {singular} inside <answer> and </answer>.",
             f"Title: {item['title']}"]
    v = item.get("genres")  # MovieLens has no description / rating fields; Amazon rows carry no genres
    if _present(v):
        lines.append(f"Genres: {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
    if _present(item.get("year")):
        lines.append(f"Year: {item['year']}")
    if _present(item.get("average_rating")):
        lines.append(f"User Rating: {_fmt_rating(item['average_rating'])}")
    if _present(item.get("rating_number")):
        label = "Number of Ratings" if singular == "movie" else "Number of Buyers"
        lines.append(f"{label}: {int(item['rating_number'])}")
    desc = item.get("description")
    if isinstance(desc, (list, tuple)):
        desc = " ".join(map(str, desc))
    if _present(desc):
        lines.append(f"Description: {_words(desc, max_description_words)}")
    return [{"role": "user", "content": "\n".join(lines)}]


def _template_error():
    """The exception class chat templates raise (``raise_exception`` in HF templates: jinja2's TemplateError)."""
    try:
        from jinja2.exceptions import TemplateError
    except ImportError:  # pragma: no cover - transformers' chat templates need jinja2
        return ValueError
    return TemplateError


def _apply(tokenizer, messages: list[dict], generation_prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def fold_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """``messages`` with ``system_prompt`` put in front of the first user turn (system text, blank line, user
    text): how Gemma's docs give a system prompt to a template without a system role. A conversation that does
    not open with a user turn gets the system text as a user turn of its own."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "user":
        msgs[0]["content"] = f"{system_prompt}\n\n{msgs[0]['content']}"
        return msgs
    return [{"role": "user", "content": system_prompt}] + msgs


def _unrenderable(tokenizer, err: Exception):
    from r2ec.errors import UserError
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return UserError(f"llm.backbone {name!r}: its chat template cannot render the prompts, with or without a "
                     f"system message ({type(err).__name__}: {err})")


def render_text(tokenizer, messages: list[dict], system_prompt: str = "") -> str:
    """Chat-template text with the generation prompt.

    A non-empty ``system_prompt`` is prepended as a system message. An empty one drops the template's default
    system message: the conversation is rendered after a sentinel system message and the rendering of that
    system message alone is cut off the front (works for ChatML-like templates; otherwise the template's
    default is kept).

    A template that rejects the system role (Gemma-2's raises "System role not supported") gets the system
    prompt folded into the first user turn (:func:`fold_system`), and with an empty system prompt the messages
    alone. A template that renders the messages in no way is a :class:`~r2ec.errors.UserError` naming the
    backbone.
    """
    bad = _template_error()
    if system_prompt:
        try:
            return _apply(tokenizer, [{"role": "system", "content": system_prompt}] + list(messages))
        except bad:
            try:
                return _apply(tokenizer, fold_system(messages, system_prompt))
            except bad as e:
                raise _unrenderable(tokenizer, e) from e
    sentinel = "\x00r2ec-system\x00"
    sys_msg = [{"role": "system", "content": sentinel}]
    try:
        full = _apply(tokenizer, sys_msg + list(messages))
        prefix = _apply(tokenizer, sys_msg, generation_prompt=False)
    except bad:  # no system role: nothing to drop
        full = prefix = ""
    if full.startswith(prefix) and sentinel in prefix:
        return full[len(prefix):]
    try:
        return _apply(tokenizer, messages)
    except bad as e:
        raise _unrenderable(tokenizer, e) from e


def render_prompt(tokenizer, messages: list[dict], system_prompt: str = "", *,
                  max_tokens: int | None = None) -> list[int]:
    """Token ids of the chat-rendered prompt ending with the assistant header (generation prompt).

    ``max_tokens`` keeps the last ``max_tokens`` ids (hard left truncation; :func:`sample_prompt_ids` instead
    drops the oldest history lines first so that the instruction survives).
    """
    ids = tokenizer.encode(render_text(tokenizer, messages, system_prompt), add_special_tokens=False)
    if max_tokens is not None and max_tokens > 0 and len(ids) > max_tokens:
        ids = ids[-max_tokens:]
    return ids


def render_item(tokenizer, messages: list[dict], system_prompt: str = "") -> list[int]:
    """Chat template + the assistant turn literally ``<answer>`` (the pooled position is the last id)."""
    return tokenizer.encode(render_text(tokenizer, messages, system_prompt) + ANSWER, add_special_tokens=False)


def display_title(item: dict, show_year: bool = False) -> str:
    """An item's title in a history line: ``"Toy Story (1995)"`` with ``show_year`` and a known year (MovieLens's
    own title format, which the data stage splits into title and year), else the title alone."""
    if show_year and _present(item.get("year")):
        return f"{item['title']} ({int(item['year'])})"
    return str(item["title"])


def history_dicts(items_by_id: dict[int, dict], item_ids: list[int], ratings: list[float],
                  timestamps: list[int], show_year: bool = False) -> list[dict]:
    """Build the ``history`` argument of :func:`user_messages` from a sample row and an id→item-dict map
    (``show_year``: see :func:`display_title`)."""
    return [{"title": display_title(items_by_id[i], show_year), "rating": r, "timestamp": t}
            for i, r, t in zip(item_ids, ratings, timestamps)]


@dataclass
class PromptTruncation:
    """Counts of the user prompts :func:`sample_prompt_ids` rendered, per stage (``stage``: the one counted now):
    how many, how many were truncated to ``max_tokens`` (oldest history lines dropped, or a hard left cut), the
    history lines dropped, and the longest prompt before truncation (the budget that would hold them all)."""
    stage: str = "train"
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, full_len: int, lines_dropped: int, hard_cut: bool) -> None:
        c = self.counts.setdefault(self.stage, {"prompts": 0, "truncated": 0, "history_lines_dropped": 0,
                                                "hard_cut": 0, "longest_tokens": 0})
        c["prompts"] += 1
        c["truncated"] += int(lines_dropped > 0 or hard_cut)
        c["history_lines_dropped"] += int(lines_dropped)
        c["hard_cut"] += int(hard_cut)
        c["longest_tokens"] = max(c["longest_tokens"], int(full_len))

    @contextlib.contextmanager
    def at(self, stage: str):
        """Count under ``stage`` inside the block (an evaluation split), then go back to the current one."""
        before, self.stage = self.stage, stage
        try:
            yield self
        finally:
            self.stage = before

    def report(self, method: str, budget: int) -> dict[str, dict[str, int]]:
        """Log each stage's counts once (a warning when a prompt was truncated); return them per stage."""
        for stage, c in self.counts.items():
            (log.warning if c["truncated"] else log.info)(
                "%s %s: %d of %d user prompts truncated to llm.max_prompt_tokens=%d (%d history lines dropped, "
                "%d hard cuts; longest prompt %d tokens)", method, stage, c["truncated"], c["prompts"], budget,
                c["history_lines_dropped"], c["hard_cut"], c["longest_tokens"])
        return {k: dict(v) for k, v in self.counts.items()}

    def beside(self, metrics: dict, method: str, budget: int, stages: tuple[str, ...] | None = None) -> dict:
        """``metrics`` with the counts of ``stages`` (None: all) as ``prompts``, every stage logged once by
        :meth:`report`; unchanged when none of them was counted."""
        counts = {k: v for k, v in self.report(method, budget).items() if stages is None or k in stages}
        return {**metrics, "prompts": counts} if counts else metrics

    @staticmethod
    def merged(per_rank: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
        """The counts of several processes' shards as one run's: sums, and the longest prompt of all."""
        out: dict[str, dict[str, int]] = {}
        for counts in per_rank:
            for stage, c in counts.items():
                o = out.setdefault(stage, dict.fromkeys(c, 0))
                for k, v in c.items():
                    o[k] = max(o[k], v) if k == "longest_tokens" else o[k] + v
        return out

    def truncated(self, stage: str | None = None) -> int:
        """Prompts truncated so far under ``stage`` (None: the current one)."""
        return self.counts.get(stage or self.stage, {}).get("truncated", 0)


def sample_prompt_ids(tokenizer, sample: dict, items_by_id: dict[int, dict], domain: str,
                      system_prompt: str = "", max_tokens: int | None = None, task: str = "recommend",
                      show_year: bool = False, truncation: PromptTruncation | None = None) -> list[int]:
    """Prompt ids of one sample row (dict with history_item_ids/ratings/timestamps, target_timestamp).

    Over ``max_tokens``, the oldest history lines are dropped until it fits (then hard left truncation).
    ``task``: see :func:`user_messages`; ``show_year``: see :func:`display_title`. ``truncation`` counts the
    prompt (:class:`PromptTruncation`).
    """
    hist = history_dicts(items_by_id, sample["history_item_ids"], sample["history_ratings"],
                         sample["history_timestamps"], show_year)
    n_hist, full_len = len(hist), None
    while True:
        ids = render_prompt(tokenizer, user_messages(hist, sample["target_timestamp"], domain, task=task),
                            system_prompt)
        full_len = len(ids) if full_len is None else full_len
        if not max_tokens or len(ids) <= max_tokens or len(hist) <= 1:
            break
        hist = hist[1:]
    hard = bool(max_tokens and len(ids) > max_tokens)
    if truncation is not None:
        truncation.add(full_len, n_hist - len(hist), hard)
    return ids[-max_tokens:] if hard else ids
