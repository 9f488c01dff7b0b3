"""The oldest transformers the trainer runs on, checked when a training command is imported.

    TRANSFORMERS_FLOOR
    check_transformers()     UserError (one line) if the installed transformers is older

Why this floor (found by installing older releases and running the tiny commands, see the README):
- 5.21: boolean `logits_to_keep` (SFT and DPO run the LM head only where an answer token is predicted);
  on 5.20 SFT and DPO fail with "IndexError: too many indices for tensor of dimension 3".
- 5.23: `activation_checkpointing_enable` (--grad-ckpt); on 5.21 and 5.22 it is an AttributeError.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

from zhihu_rlhf.errors import UserError

TRANSFORMERS_FLOOR = "5.23"


def check_transformers() -> None:
    """Fail before any work, with one line, when the installed transformers is older than the floor."""
    installed = version("transformers")
    if Version(installed) < Version(TRANSFORMERS_FLOOR):
        raise UserError(
            f"zhihu_rlhf.train needs transformers>={TRANSFORMERS_FLOOR}, found {installed}: "
            f"pip install -U 'transformers>={TRANSFORMERS_FLOOR}'"
        )
