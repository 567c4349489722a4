"""ViT backbone of HaMeR (ViTPose-H layout): 256x192 crop -> 16x12 grid of tokens."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn


class PatchEmbed(nn.Module):
    """Conv patch embedding with ViTPose's padding of 2 (16x16 kernel, stride 16)."""

    def __init__(self, embed_dim: int, patch_size: int = 16, in_chans: int = 3, padding: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, padding=padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) image -> (B, Hp*Wp, C) tokens and the grid size (Hp, Wp)."""
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class ViT(nn.Module):
    """Plain ViT as HaMeR uses it: no class token, absolute position embedding, final LayerNorm.

    The position embedding keeps ViTPose's unused class-token slot; as in the original, it is added to every token
    (``pos_embed[:, 1:] + pos_embed[:, :1]``).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        img_size: tuple[int, int] = (256, 192),
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(embed_dim, patch_size=patch_size)
        num_patches = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(
            [
                Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(depth)
            ]
        )
        self.last_norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 192) normalized RGB -> (B, C, 16, 12) feature map."""
        batch = x.shape[0]
        x, (hp, wp) = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(batch, -1, hp, wp)
