"""HaMeR's MANO head: a transformer decoder whose one token cross-attends to the ViT features.

Module names follow the original (``transformer.transformer.layers.{i}.{0,1,2}``, ``fn.to_out.0``, ``fn.net.0/3``) so
the released state_dict loads as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(B, 6k) 6D rotations (Zhou et al. 2019, HaMeR's column layout) -> (B*k, 3, 3) rotation matrices."""
    x = x.reshape(-1, 2, 3).permute(0, 2, 1)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


class PreNorm(nn.Module):
    """LayerNorm, then ``fn``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class SelfAttention(nn.Module):
    """Multi-head self-attention without qkv bias."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Multi-head attention of the tokens (queries) to a context (keys, values)."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_kv = nn.Linear(context_dim, heads * dim_head * 2, bias=False)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (self.to_q(x), k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    """Linear-GELU-Linear. The Identity stands where the original's dropout was, keeping its ``net.3`` index."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Identity(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerCrossAttn(nn.Module):
    """``depth`` pre-norm layers of self-attention, cross-attention and feed-forward, each residual."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, context_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PreNorm(dim, SelfAttention(dim, heads, dim_head)),
                        PreNorm(dim, CrossAttention(dim, context_dim, heads, dim_head)),
                        PreNorm(dim, FeedForward(dim, mlp_dim)),
                    ]
                )
                for _ in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for self_attn, cross_attn, ff in self.layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = ff(x) + x
        return x


class TransformerDecoder(nn.Module):
    """Token embedding + learned position embedding, then :class:`TransformerCrossAttn`."""

    def __init__(
        self, token_dim: int, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, context_dim: int
    ) -> None:
        super().__init__()
        self.to_token_embedding = nn.Linear(token_dim, dim)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = TransformerCrossAttn(dim, depth, heads, dim_head, mlp_dim, context_dim)

    def forward(self, token: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, 1, token_dim) token, (B, N, context_dim) context -> (B, 1, dim)."""
        x = self.to_token_embedding(token) + self.pos_embedding[:, : token.shape[1]]
        return self.transformer(x, context=context)


class MANOTransformerDecoderHead(nn.Module):
    """Regresses MANO pose (16 rotations), shape (10 betas) and weak-perspective camera from ViT features.

    The ``init_*`` buffers hold MANO's mean parameters (from ``mano_mean_params.npz`` or the checkpoint); the
    decoder predicts residuals to them.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        context_dim: int,
        num_hand_joints: int = 15,
        ief_iters: int = 1,
        mean_shape_input: bool = False,
    ) -> None:
        super().__init__()
        self.num_joints = num_hand_joints + 1
        self.ief_iters = ief_iters
        self.mean_shape_input = mean_shape_input
        npose = 6 * self.num_joints
        token_dim = npose + 10 + 3 if mean_shape_input else 1
        self.transformer = TransformerDecoder(token_dim, dim, depth, heads, dim_head, mlp_dim, context_dim)
        self.decpose = nn.Linear(dim, npose)
        self.decshape = nn.Linear(dim, 10)
        self.deccam = nn.Linear(dim, 3)
        self.register_buffer("init_hand_pose", torch.zeros(1, npose))
        self.register_buffer("init_betas", torch.zeros(1, 10))
        self.register_buffer("init_cam", torch.zeros(1, 3))

    def forward(self, features: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(B, C, h, w) features -> MANO params and camera.

        Returns {global_orient (B,1,3,3), hand_pose (B,15,3,3) rotation matrices, betas (B,10)} and cam (B,3).
        """
        batch = features.shape[0]
        context = rearrange(features, "b c h w -> b (h w) c")
        pose = self.init_hand_pose.expand(batch, -1)
        betas = self.init_betas.expand(batch, -1)
        cam = self.init_cam.expand(batch, -1)
        for _ in range(self.ief_iters):
            if self.mean_shape_input:
                token = torch.cat([pose, betas, cam], dim=1)[:, None, :]
            else:
                token = torch.zeros(batch, 1, 1, device=features.device, dtype=features.dtype)
            out = self.transformer(token, context=context).squeeze(1)
            pose = self.decpose(out) + pose
            betas = self.decshape(out) + betas
            cam = self.deccam(out) + cam
        rotmats = rot6d_to_rotmat(pose).view(batch, self.num_joints, 3, 3)
        params = {"global_orient": rotmats[:, [0]], "hand_pose": rotmats[:, 1:], "betas": betas}
        return params, cam
