"""Where a dataset file lives under a storage root: Rucio's deterministic path.

``<scope with each '.' a directory>/<md5("scope:lfn")[0:2]>/<md5[2:4]>/<lfn>``, e.g.
``user.jdoe:data.txt`` -> ``user/jdoe/1f/7a/data.txt``. It is the layout the real PanDA pilot's
``mv`` copy tool reads inputs from and writes outputs to (its ``get_path``), so a pilot on this
machine and Bamboo find the same bytes at the same place (docs/architecture.md, "Running the
PanDA pilot").
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

from bamboo.storage.base import check_segment


def deterministic_path(scope: str, lfn: str) -> PurePosixPath:
    """The relative path of ``scope:lfn``.

    Raises:
        bamboo.storage.UnsafeName: a part of the scope, or the LFN, is not a safe file name (an
            empty part as in ``user..x`` included), so the path cannot leave the storage root.
    """
    digest = hashlib.md5(f"{scope}:{lfn}".encode(), usedforsecurity=False).hexdigest()
    scope_parts = [check_segment(part) for part in scope.split(".")]
    return PurePosixPath(*scope_parts, digest[0:2], digest[2:4], check_segment(lfn))
