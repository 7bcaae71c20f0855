"""The whole of params.yaml: :class:`Params`, its top-level keys and one field per section."""

from __future__ import annotations

from dataclasses import dataclass

from r2ec import methods
from r2ec.config.backbones import check_backbones
from r2ec.config.fields import ConfigError, Section, _doc, check_fields, check_names
from r2ec.config.methods import (BigrecCfg, CaserCfg, ContrastiveCfg, D3Cfg, Gru4recCfg, LangptuneCfg, PopularityCfg,
                                 RandomCfg, ReadoutCfg, RecpoCfg, SasrecCfg, TigerCfg)
from r2ec.config.names import AMAZON_CATEGORIES, CLASSIC_METHODS, CONTRASTIVE_METHOD, MOVIELENS
from r2ec.config.sections import DataCfg, EvalCfg, LatencyCfg, LaunchCfg, LlmCfg, LoraCfg, ReportCfg


BASELINE_KINDS = tuple(k for k, lst in methods.KIND_LIST.items() if lst == "baselines")


@dataclass(frozen=True)
class Params(Section):
    seed: int = _doc("global seed for anything not seeded by its own section", ge=0, default=2025)
    seeds: tuple[int, ...] = _doc("training seeds of Snakemake's runs: the first names the runs under results/runs "
                                  "(the sections' own seed keys), each further one a results/seeds/<seed>/runs tree "
                                  "(Table 1: mean +- std, across-seed t-tests)", ge=0, nonempty=True,
                                  default=(2025,))
    datasets: tuple[str, ...] = _doc("'movielens-100k' and/or Amazon 2023 category names", default=(MOVIELENS,))
    baselines: tuple[str, ...] = _doc("classic baselines the pipeline trains", default=CLASSIC_METHODS)
    llm_baselines: tuple[str, ...] = _doc("LLM baselines the pipeline trains (each its own stage: DVC cannot put "
                                          "them in the generic baselines matrix)", default=())
    plugins: tuple[str, ...] = _doc("modules imported before the params are read; each registers methods of its "
                                    "own with r2ec.methods.register (docs/extending.md)", default=())
    backbones: tuple[str, ...] = _doc("LLM backbones, one Table 1 group each (empty = llm.backbone alone); must hold "
                                      "llm.backbone, whose runs are results/runs; each other one runs the LLM "
                                      "methods in results/backbones/<name>/", default=())
    r2ec_variants: tuple[str, ...] = _doc("R2ec variants the pipeline trains besides r2ec_no_reasoning, which is "
                                          "always trained with them (a Table 1 row and the warm start)",
                                          default=())
    data: DataCfg = _doc("data download and preprocessing", default_factory=DataCfg)
    eval: EvalCfg = _doc("shared evaluator", default_factory=EvalCfg)
    sasrec: SasrecCfg = _doc("SASRec", default_factory=SasrecCfg)
    gru4rec: Gru4recCfg = _doc("GRU4Rec", default_factory=Gru4recCfg)
    caser: CaserCfg = _doc("Caser", default_factory=CaserCfg)
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
    launch: LaunchCfg = _doc("how the workflow starts LLM training jobs (processes, launcher)",
                             default_factory=LaunchCfg)
    report: ReportCfg = _doc("tables and figures", default_factory=ReportCfg)
    latency: LatencyCfg = _doc("inference latency (Table 4)", default_factory=LatencyCfg)

    def __getattr__(self, name: str):
        """A plugin method's section (``getattr(params, "toy")``), set by the loader after the built-in ones."""
        extra = self.__dict__.get("_plugin_sections", {})
        if name in extra:
            return extra[name]
        raise AttributeError(name)

    def __post_init__(self) -> None:
        self.check()  # first: its seeds rule says more than the range of one seed
        check_fields(self, self.SECTION)

    def check(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds: need one or more distinct non-negative seeds, got {list(self.seeds)}")
        for ds in self.datasets:
            if ds != MOVIELENS and ds not in AMAZON_CATEGORIES:
                raise ConfigError(f"datasets: unknown dataset {ds!r}; use {MOVIELENS!r} or an Amazon 2023 category "
                                  f"({', '.join(AMAZON_CATEGORIES)})")
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError(f"datasets: duplicate entries in {list(self.datasets)}")
        for m in self.baselines:
            if m in methods.names("llm"):
                raise ConfigError(f"baselines: {m!r} is an LLM baseline with its own stage; list it in llm_baselines")
        check_names("baselines", self.baselines, methods.names(*BASELINE_KINDS))
        check_names("llm_baselines", self.llm_baselines, methods.names("llm"))
        check_names("r2ec_variants", self.r2ec_variants, methods.names("r2ec"))
        check_backbones(self)
        if CONTRASTIVE_METHOD in self.r2ec_variants:
            raise ConfigError(f"r2ec_variants: {CONTRASTIVE_METHOD} is trained as its own stage whenever "
                              f"r2ec_variants is not empty (it is a Table 1 row and the warm start of the reasoning "
                              f"variants); remove it from the list")
