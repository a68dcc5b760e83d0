"""`python -m torch.distributed.run ... tests/torchrun_cpu.py SCRIPT ARGS`: run a front end under torchrun on
a CPU-only machine, as on GPUs. diffusers' enable_parallelism picks each rank's device as
rank % torch.accelerator.device_count(), which is 0 (a division by zero) without an accelerator; here every
rank counts one device, the CPU. Nothing else changes: the script's own code runs as under torchrun."""

import runpy
import sys

import torch

torch.accelerator.device_count = lambda: 1
torch.set_num_threads(1)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
