import os
import sys
from pathlib import Path

import torch

# CPU tests: one thread (2-core machines are ~1000x slower on tiny matmuls with two), never a hub.
torch.set_num_threads(1)
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
