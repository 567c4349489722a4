"""HaMeR's network: ViT backbone, MANO transformer-decoder head, MANO layer.

This package's ``__init__`` stays light (no torch or timm): the configs and the ONNX Runtime backend read
:data:`OUTPUT_NAMES` and :mod:`.variants` without building a model.
"""

OUTPUT_NAMES = (
    "pred_cam", "pred_cam_t", "focal_length", "pred_keypoints_3d", "pred_vertices", "pred_keypoints_2d",
    "global_orient", "hand_pose", "betas",
)
