"""What a build of ``rspnet._C`` records about itself, shared by setup.py and
the runtime loader. Imports nothing but the standard library, so setup.py can
load it by path before torch's build helpers are configured."""
from __future__ import annotations

import hashlib
import os

BUILD_INFO_FILE = "_C_build.json"
REBUILD_COMMAND = "pip install -e . --no-build-isolation   # run in the rspnet source tree"
_SOURCE_SUFFIXES = (".cpp", ".cu", ".cuh", ".h")


def source_hash(csrc_dir: str) -> str | None:
    """SHA-256 over every kernel source under ``csrc_dir`` (None if absent).

    A build stores this hash; an editable install compares it at import to
    notice that the sources changed since the last compile (a stale ``_C``).
    """
    if not os.path.isdir(csrc_dir):
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(csrc_dir):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(_SOURCE_SUFFIXES):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, csrc_dir).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()
