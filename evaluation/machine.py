"""The state of the machine a timing depends on: cores, torch's threads, OMP_NUM_THREADS, load.

An answer file records it under one settings key, `machine`, which no equality of settings looks at
(a resume or a comparison does not depend on how busy the machine was):

    {"cpu_count": 2, "omp_num_threads": "1",  # None: not set
     "torch_threads": 1,              # torch.get_num_threads() when this line's answer was written
     "load_start": [1.2, 0.9, 0.5],   # load average (1, 5, 15 min) when the process started
     "load_end": [1.4, 1.0, 0.6]}     # when this line's answer was written (last line: the end)

A load average above the number of cores means runnable processes waited for a core: timings taken
then measure the queue as much as the code, and the generator and speed.py say so.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

log = logging.getLogger(__name__)

KEY = "machine"


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where the system does not report them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def capture() -> dict:
    """The machine now, as the start of a run (see the module docstring)."""
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_start": load_average(),
            "load_end": None}


def at_answer(settings: dict) -> dict:
    """`settings` with the machine's load and torch's threads now (settings without a machine
    record are returned as they are)."""
    if KEY not in settings:
        return settings
    now = {"torch_threads": torch.get_num_threads(), "load_end": load_average()}
    return {**settings, KEY: {**settings[KEY], **now}}


def busy(machine: Optional[dict], when: str) -> Optional[str]:
    """A warning when the 1-minute load average at `when` ("start" / "end") exceeded the cores."""
    if not machine or not machine.get(f"load_{when}") or not machine.get("cpu_count"):
        return None
    load, cores = machine[f"load_{when}"][0], machine["cpu_count"]
    if load <= cores:
        return None
    return (f"the machine was busier than its cores at the {when} of the run (load average "
            f"{load:.2f} on {cores} cores): timings are unreliable")


def warn_if_busy(when: str) -> None:
    """Log `busy`'s warning for the machine now."""
    warning = busy({"cpu_count": os.cpu_count(), f"load_{when}": load_average()}, when)
    if warning:
        log.warning("%s", warning)
