"""hamer: faithful, stripped-down HaMeR inference (Pavlakos et al., CVPR 2024) for 3D hand joints."""

__version__ = "0.1.0"
