"""Text and vision encoders split into a frozen `lower` part and a trainable `upper` part.

    from mmsr.encoders import create_encoder
    encoder = create_encoder("minilm", "text", top_blocks=2, max_text_len=50)

See `registry` for how names are resolved and `base.SplitEncoder` for the contract.
"""

from mmsr.encoders.base import SplitEncoder
from mmsr.encoders.from_config import create_encoders
from mmsr.encoders.registry import (
    create_encoder,
    list_encoders,
    list_families,
    register_family,
    register_name,
    resolve_spec,
)

__all__ = ["SplitEncoder", "create_encoder", "create_encoders", "list_encoders", "list_families", "register_family", "register_name",
           "resolve_spec"]
