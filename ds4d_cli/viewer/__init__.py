"""ds4d's 4D viewer: one static web page (``web/``) used by ``ds4d export --format html`` and
served by ``ds4d view``. The page plays one compressed splat file per frame with Spark (a
maintained three.js Gaussian-splat renderer, from npm, bundled into ``web/vendor`` at setup).
"""
