"""The one evaluator every method goes through: full ranking, history masking, H@K / N@K."""

from r2ec.eval.metrics import metrics_from_ranks
from r2ec.eval.ranking import rank_targets
from r2ec.eval.evaluator import Scorer, evaluate, evaluation_samples, write_run_outputs

__all__ = ["Scorer", "evaluate", "evaluation_samples", "metrics_from_ranks", "rank_targets",
           "write_run_outputs"]
