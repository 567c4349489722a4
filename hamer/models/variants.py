"""The network's sizes, registered by name in one place (as timm registers its ViT variants).

``vit_h`` is the released HaMeR: a ViT-H/16 backbone (ViTPose-H) and a 6-layer transformer-decoder MANO head.
``tiny`` is the same architecture at a toy size: the tests and benchmarks build it with random weights.
A variant becomes model-config keys with :func:`variant_config`; ``hamer.configs.default_config`` is ``vit_h``'s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkSize:
    """Sizes of the ViT backbone and of the MANO head's transformer decoder (its context is the backbone's width)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    head_dim: int
    head_depth: int
    head_heads: int
    head_dim_head: int
    head_mlp_dim: int

    def config(self) -> dict:
        """The model-config keys (``MODEL.BACKBONE.*``, ``MODEL.MANO_HEAD.TRANSFORMER_DECODER.*``) of this size."""
        return {"MODEL": {
            "BACKBONE": {"EMBED_DIM": self.embed_dim, "DEPTH": self.depth, "NUM_HEADS": self.num_heads,
                         "MLP_RATIO": self.mlp_ratio},
            "MANO_HEAD": {"TRANSFORMER_DECODER": {
                "dim": self.head_dim, "depth": self.head_depth, "heads": self.head_heads,
                "dim_head": self.head_dim_head, "mlp_dim": self.head_mlp_dim, "context_dim": self.embed_dim}},
        }}


VARIANTS: dict[str, NetworkSize] = {
    "vit_h": NetworkSize(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0,
                         head_dim=1024, head_depth=6, head_heads=8, head_dim_head=64, head_mlp_dim=1024),
    "tiny": NetworkSize(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                        head_dim=64, head_depth=2, head_heads=2, head_dim_head=16, head_mlp_dim=64),
}


def variant_config(name: str) -> dict:
    """The model-config keys of the variant ``name``; ValueError naming the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"unknown network variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name].config()
