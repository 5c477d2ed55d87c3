"""``ds4d batch``: many clips through every stage, on this machine or on a Ray cluster.

``clips`` (which clips, which workspace each), ``worker`` (one clip, start to finish),
``local`` (a process per clip, sized to the machine), ``cluster`` (a Ray task per clip),
``view`` (the live table and the summary), ``runner`` (all of it, and batch.json).
"""
