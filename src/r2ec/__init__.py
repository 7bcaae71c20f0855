"""r2ec: a reproducible pipeline for R2ec (NeurIPS 2025) and its baselines.

Layers, lowest first. A module may import modules of its own layer or of a lower one, never of a higher one
(``tests/test_layers.py`` checks every import, function-local ones included, and that modules import no cycle).
``recpo`` and ``baselines`` are siblings: neither imports the other.
"""

__version__ = "0.1.0"

# (layer, module prefixes); a module belongs to the layer of its longest matching prefix
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("r2ec.errors", "r2ec.io", "r2ec.seeding", "r2ec", "r2ec.methods", "r2ec.dist")),
    ("config", ("r2ec.config",)),
    ("data", ("r2ec.data",)),
    ("eval", ("r2ec.eval",)),
    ("llm", ("r2ec.llm", "r2ec.text_encoder")),
    ("train", ("r2ec.train",)),
    ("model", ("r2ec.model",)),
    ("methods", ("r2ec.recpo", "r2ec.baselines")),
    ("serve", ("r2ec.serve",)),
    ("report", ("r2ec.report",)),
    ("pipeline", ("r2ec.pipeline",)),
    ("cli", ("r2ec.cli", "r2ec.__main__")),
)
SIBLINGS_APART = (("r2ec.baselines", "r2ec.recpo"), ("r2ec.recpo", "r2ec.baselines"))
