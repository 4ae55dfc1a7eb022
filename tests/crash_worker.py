"""`reslab train` that exits abruptly after global step N on the last rank, on torchrun's first attempt only.

torchrun starts this file instead of `-m reslab` (tests/test_distributed.py), so that a `--max-restarts` restart and
the resume from the checkpoint can be checked without a test hook in reslab's training loop: a global optimizer
step hook counts the steps of this process (which, on the first attempt, are the run's global steps).
"""

import os
import sys

from torch.optim.optimizer import register_optimizer_step_post_hook

from reslab.cli import main

CRASH_AT = int(os.environ["RESLAB_TEST_CRASH_AT_STEP"])
RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
steps = 0


def crash_after_step(optimizer, args, kwargs) -> None:
    global steps
    steps += 1
    if steps == CRASH_AT and RANK == WORLD - 1 and FIRST_ATTEMPT:
        print(f"[crash_worker] rank {RANK} exits at step {steps}", flush=True)
        os._exit(1)


register_optimizer_step_post_hook(crash_after_step)
sys.exit(main(sys.argv[1:]))
