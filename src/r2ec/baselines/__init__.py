"""Classic sequential baselines (SASRec, GRU4Rec, Caser) sharing one trainer: :func:`train_classic`."""

from r2ec.baselines.seqtrain import METHODS, build_model, load_scorer, train_classic

__all__ = ["METHODS", "build_model", "load_scorer", "train_classic"]
