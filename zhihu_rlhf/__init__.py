"""zhihu-rlhf: Zhihu Q&A -> instruct set + cleaned chosen/rejected pairs -> SFT / RM / PPO / DPO."""

__version__ = "0.1.0"
