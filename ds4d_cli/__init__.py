"""ds4d: turn a short video of one moving object into a dynamic 3D Gaussian-splatting asset (DS4D)."""

__version__ = "0.1.0"
