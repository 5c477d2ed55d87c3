"""Turning a fitted model into things people open: per-frame 3DGS PLYs (in the -Y-up convention
splat viewers expect), a turntable MP4 and an input/front/side/back comparison grid.

The stage wrapper (caching, options, progress) is :mod:`ds4d_cli.stages.export`; these modules
know nothing of workspaces.
"""
