"""pfanet: PFANet (pixel and feature alignment) for RGB-infrared person re-identification."""

__version__ = "0.1.0"
