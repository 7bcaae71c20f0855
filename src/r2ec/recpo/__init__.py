"""RecPO: the training algorithm of R2ec (rewards, advantages, losses, trainer, checkpoints)."""
