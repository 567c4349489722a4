"""The HaMeR network: normalized 256x256 crops -> MANO parameters, camera, joints and vertices."""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from ..camera import perspective_projection
from . import OUTPUT_NAMES
from .backbone import ViT
from .head import MANOTransformerDecoderHead
from .mano import MANO

__all__ = ["OUTPUT_NAMES", "HaMeRNet"]



class HaMeRNet(nn.Module):
    """Backbone + MANO head + MANO layer, as ``hamer.models.HAMER.forward_step`` at inference.

    Input: (B, 3, S, S) crops (S = ``MODEL.IMAGE_SIZE`` = 256), RGB, ImageNet-normalized; right hands as they are,
    left hands mirrored. The backbone sees the central columns ``[:, :, :, 32:-32]`` (256x192).
    Output (left hands still mirrored, as the model gives them):
      ``pred_cam`` (B,3) weak-perspective [s, tx, ty] of the crop; ``pred_cam_t`` (B,3) its translation in metres
      for focal ``FOCAL_LENGTH`` at crop size S; ``focal_length`` (B,2) pixels; ``pred_keypoints_3d`` (B,21,3) and
      ``pred_vertices`` (B,778,3) metres, MANO frame; ``pred_keypoints_2d`` (B,21,2) crop coordinates in [-0.5, 0.5];
      ``global_orient`` (B,1,3,3), ``hand_pose`` (B,15,3,3), ``betas`` (B,10).
    """

    def __init__(self, cfg: CfgNode, mano: MANO) -> None:
        super().__init__()
        bb = cfg.MODEL.BACKBONE
        dec = cfg.MODEL.MANO_HEAD.TRANSFORMER_DECODER
        self.image_size = int(cfg.MODEL.IMAGE_SIZE)
        self.focal_length = float(cfg.EXTRA.FOCAL_LENGTH)
        self.backbone = ViT(
            img_size=(self.image_size, self.image_size - 64),
            embed_dim=int(bb.EMBED_DIM),
            depth=int(bb.DEPTH),
            num_heads=int(bb.NUM_HEADS),
            mlp_ratio=float(bb.MLP_RATIO),
        )
        self.mano_head = MANOTransformerDecoderHead(
            num_hand_joints=int(cfg.MANO.NUM_HAND_JOINTS),
            dim=int(dec.dim),
            depth=int(dec.depth),
            heads=int(dec.heads),
            dim_head=int(dec.dim_head),
            mlp_dim=int(dec.mlp_dim),
            context_dim=int(dec.context_dim),
            ief_iters=int(cfg.MODEL.MANO_HEAD.IEF_ITERS),
            mean_shape_input=cfg.MODEL.MANO_HEAD.TRANSFORMER_INPUT == "mean_shape",
        )
        self.mano = mano

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) normalized crops -> dict of :data:`OUTPUT_NAMES` tensors (see the class docstring)."""
        features = self.backbone(crops[:, :, :, 32:-32])
        params, pred_cam = self.mano_head(features)
        with torch.autocast(device_type=crops.device.type, enabled=False):
            return self._mano_and_camera({k: v.float() for k, v in params.items()}, pred_cam.float())

    def _mano_and_camera(self, params: dict[str, torch.Tensor], pred_cam: torch.Tensor) -> dict[str, torch.Tensor]:
        """MANO joints/vertices and the crop camera, in float32 (also under autocast)."""
        batch = pred_cam.shape[0]
        focal = torch.full((batch, 2), self.focal_length, device=pred_cam.device, dtype=pred_cam.dtype)
        pred_cam_t = torch.stack(
            [pred_cam[:, 1], pred_cam[:, 2], 2 * focal[:, 0] / (self.image_size * pred_cam[:, 0] + 1e-9)], dim=-1
        )
        mano_out = self.mano(global_orient=params["global_orient"], hand_pose=params["hand_pose"],
                             betas=params["betas"])
        joints = mano_out.joints
        keypoints_2d = perspective_projection(
            joints, pred_cam_t, focal / self.image_size, torch.zeros_like(focal)
        )
        return {
            "pred_cam": pred_cam,
            "pred_cam_t": pred_cam_t,
            "focal_length": focal,
            "pred_keypoints_3d": joints,
            "pred_vertices": mano_out.vertices,
            "pred_keypoints_2d": keypoints_2d,
            "global_orient": params["global_orient"],
            "hand_pose": params["hand_pose"],
            "betas": params["betas"],
        }
