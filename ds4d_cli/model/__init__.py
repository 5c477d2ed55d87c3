"""DS4D model pieces: encoder, feature sampling, DSFD, TSSF, HexPlane, deformation, init, losses.

Pure tensor code: nothing here reads files or prints. ``trainer.py`` ties the pieces together;
``ds4d_cli/stages/fit.py`` feeds it tensors from the workspace.
"""
