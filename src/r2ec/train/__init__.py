"""The shared training harness of every LLM method: loop, budgets, validation, state, checkpoints, losses."""
