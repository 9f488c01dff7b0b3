"""Built-in trainer: `python -m zhihu_rlhf.train sft|rm|ppo|dpo`.

Shared pieces, one concern per module: runtime (device, precision, DDP, seeding), models (loading, the tiny model),
data (splits, padding, batch order), prompts (the one prompt format), options (TrainOptions, argparse, the tiny
profile), loop (fit, the loss contract, optimizer, schedule, checkpoints), report (metrics, curves, model card,
final save).
"""
