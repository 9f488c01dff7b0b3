"""Built-in trainer: `python -m zhihu_rlhf.train sft|rm|ppo|dpo`. Shared pieces live in zhihu_rlhf.train.common."""
