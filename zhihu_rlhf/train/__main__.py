"""`python -m zhihu_rlhf.train {sft,rm,ppo,dpo,rloo,grpo} ...` (also under `torchrun ... -m zhihu_rlhf.train ...`)."""

from __future__ import annotations

import importlib
import sys

from zhihu_rlhf.errors import UserError, cli_main

COMMANDS = {
    "sft": "supervised fine-tuning on the instruct set (prompt -> completion)",
    "rm": "reward model on chosen/rejected pairs",
    "ppo": "PPO against a reward model (policy from SFT)",
    "dpo": "direct preference optimisation on chosen/rejected pairs",
    "rloo": "RLOO: K samples per prompt, leave-one-out baseline, no value model",
    "grpo": "GRPO: K samples per prompt, group-normalised advantages, no value model",
}

USAGE = "usage: python -m zhihu_rlhf.train {" + ",".join(COMMANDS) + "} [options]   (--help after a command lists them)\n\n" + "\n".join(
    f"  {name:<4} {what}" for name, what in COMMANDS.items()
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    # Imported on demand: one command's heavy or missing module never breaks another.
    module_name = f"zhihu_rlhf.train.{command}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(f"command {command!r} is not available in this version of zhihu-rlhf") from None
    return module.main(rest)


if __name__ == "__main__":
    cli_main(main)
