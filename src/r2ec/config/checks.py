"""Rules between sections of a params file (a single key's range and the rules within one section are declared
on the sections themselves, :mod:`r2ec.config.sections` and :mod:`r2ec.config.methods`)."""

from __future__ import annotations

from r2ec.config.fields import ConfigError
from r2ec.config.params import Params


def check_params(p: Params) -> None:
    """Raise :class:`ConfigError` naming the key when two sections disagree."""
    if p.readout.rank == 0 and p.contrastive.steps <= 0:
        raise ConfigError("contrastive.steps: r2ec_no_reasoning would train nothing (no readout fit with "
                          "readout.rank = 0, no LoRA steps); set contrastive.steps > 0 for the paper's head")
    if p.tiger.beam < max(p.eval.ks):
        raise ConfigError(f"tiger.beam: {p.tiger.beam} is below the largest cut-off eval.ks = {max(p.eval.ks)}")
    if p.d3.num_beams < max(p.eval.ks):
        raise ConfigError(f"d3.num_beams: {p.d3.num_beams} is below the largest cut-off eval.ks = {max(p.eval.ks)}")
