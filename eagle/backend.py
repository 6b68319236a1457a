"""The kernels a model runs, chosen once where the model is built."""
from __future__ import annotations

# --attention-backend names (besides "auto") -> torch's SDPBackend members
ATTENTION_BACKENDS = {"math": "MATH", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                      "flash": "FLASH_ATTENTION"}
