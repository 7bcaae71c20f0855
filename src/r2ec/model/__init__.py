"""R2ec's model: item table, user states, the one scoring head, the readout, loading a trained run."""
