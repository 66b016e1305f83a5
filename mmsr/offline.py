"""mmsr never reaches the network for weights unless told to.

The pretrained encoders load from local paths (README, "Encoders"): `mmsr models prepare`'s
offline defaults, a transformers directory, or a Hub name already in the local cache. Left to
themselves, huggingface_hub and transformers would try the Hub first and, on a machine
without it, stall on timeouts. A user who wants them to download says so in the environment
(`HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0`), which this default never overrides.
"""

from __future__ import annotations

import os

HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def stay_offline() -> None:
    """Offline unless the environment already says otherwise. Call it before huggingface_hub or
    transformers is imported: they read these variables once, on import."""
    for key, value in HUB_OFFLINE.items():
        os.environ.setdefault(key, value)
