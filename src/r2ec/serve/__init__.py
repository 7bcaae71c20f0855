"""The top floor: answering a user from a trained run (``python -m r2ec recommend``)."""
