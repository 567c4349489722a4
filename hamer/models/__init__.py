"""HaMeR's network: ViT backbone, MANO transformer-decoder head, MANO layer."""
