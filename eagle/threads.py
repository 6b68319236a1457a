"""CPU threads for small models.

torch runs each operation on every core by default. A small model's operations take microseconds,
so each one costs more in handing work to the other threads and waiting for all of them than it
gains; and when the cores are shared with other processes, every operation waits until the
operating system schedules each of its threads again. The tiny model decoded 24x slower with
torch's default of 2 threads than with one on a 2-core CPU busy with other jobs (load average 6):
the generator uses one thread for such models unless OMP_NUM_THREADS says otherwise.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

SMALL_HIDDEN = 1024  # hidden sizes below this: one CPU thread decodes fastest


def pick_cpu_threads(device: torch.device, hidden_size: int) -> None:
    """One torch thread for a small model on the CPU, unless OMP_NUM_THREADS chose a number."""
    if device.type != "cpu" or hidden_size >= SMALL_HIDDEN or "OMP_NUM_THREADS" in os.environ:
        return
    if torch.get_num_threads() != 1:
        log.info("hidden size %d on the CPU: one torch thread (was %d; set OMP_NUM_THREADS to "
                 "choose)", hidden_size, torch.get_num_threads())
        torch.set_num_threads(1)
