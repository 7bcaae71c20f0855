"""The LLM side of R²ec: backbone loading, prompts, ``<answer>`` pooling, item encoding, reasoning rollouts.

Submodules import torch/transformers lazily where possible; import what you need from the submodules::

    from r2ec.llm.backbone import load_backbone, add_lora, answer_token_id, ANSWER
    from r2ec.llm.prompts import user_messages, item_messages, render_prompt, render_item
    from r2ec.llm.encoder import hidden_at_answer, encode_items, cosine_scores
    from r2ec.llm.rollout import Trajectory, HFRolloutEngine, make_engine, completion_logprobs
"""
