"""Where the viewer's web files live, whether the vendored JavaScript is installed, and copying.

``web/index.html``, ``viewer.js`` and ``viewer.css`` are ours and tracked in git;
``web/vendor/ds4d-lib.js`` (three.js + Spark) is built from the pinned npm packages by
``make setup`` (``npm ci`` then ``npm run build:viewer``), never fetched from a CDN.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ds4d_cli.errors import Ds4dError

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "viewer.js", "viewer.css")
VENDOR_FILES = ("vendor/ds4d-lib.js",)


def check_installed(web_dir: Path = WEB_DIR) -> None:
    """A user error naming the fix when the vendored JavaScript has not been built."""
    missing = [name for name in PAGE_FILES + VENDOR_FILES if not (web_dir / name).is_file()]
    if missing:
        raise Ds4dError(
            f"the viewer's web files are not installed ({web_dir / missing[0]} is missing)",
            hint="run `make setup` (it installs the pinned npm packages and bundles three.js + Spark; needs node and npm)",
        )


def web_digest(web_dir: Path = WEB_DIR) -> str:
    """A digest of every file the page is made of: a new viewer version makes old pages stale."""
    check_installed(web_dir)
    h = hashlib.sha256()
    for name in PAGE_FILES + VENDOR_FILES:
        h.update(name.encode())
        h.update((web_dir / name).read_bytes())
    return h.hexdigest()[:16]


def copy_web_files(out_dir: Path, web_dir: Path = WEB_DIR) -> None:
    """Copy the page and its vendored libraries into ``out_dir``."""
    check_installed(web_dir)
    for name in PAGE_FILES + VENDOR_FILES:
        dst = out_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(web_dir / name, dst)
