"""Test-wide settings."""

import torch

# The tiny models are far faster on one thread; two threads spin against each other on a busy 2-core machine.
torch.set_num_threads(1)
