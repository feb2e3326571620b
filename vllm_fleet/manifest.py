"""Model manifests: the file list of a staged model with sizes and sha256.

Plain functions, standard library only, so the node-side ``vllm_model_manifest``
module (through ``plugins/module_utils/vllm_fleet``) and the unit tests share them.  A manifest is JSON::

    {"version": 1, "source": "hf:org/name@rev",
     "files": {"config.json": {"size": 123, "mtime_ns": ..., "sha256": "..."}}}
"""
from __future__ import annotations

import hashlib
import json
import os

MANIFEST_VERSION = 1
_CHUNK = 4 * 1024 * 1024
# Hub download bookkeeping, never part of what the model is.
IGNORED_DIRS = frozenset({".cache", ".git"})


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def list_files(root):
    """Relative paths of the regular files under ``root``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def _entry(root, rel, digest=None):
    st = os.stat(os.path.join(root, rel))
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": digest or sha256_file(os.path.join(root, rel)),
    }


def build(root, source):
    """Manifest of every file under ``root``."""
    return {
        "version": MANIFEST_VERSION,
        "source": source,
        "files": {rel: _entry(root, rel) for rel in list_files(root)},
    }


def verify(root, manifest, full=False):
    """Compare ``root`` with ``manifest``.

    Returns ``{"missing": [...], "unexpected": [...], "modified": [...],
    "rehashed": n}``.  With ``full=False`` only files whose size or mtime
    differ from the manifest are re-hashed (a changed size alone is already a
    modification).
    """
    expected = manifest.get("files", {})
    present = set(list_files(root))
    result = {
        "missing": sorted(set(expected) - present),
        "unexpected": sorted(present - set(expected)),
        "modified": [],
        "rehashed": 0,
    }
    for rel in sorted(present & set(expected)):
        want = expected[rel]
        st = os.stat(os.path.join(root, rel))
        if st.st_size != want["size"]:
            result["modified"].append(rel)
            continue
        if full or st.st_mtime_ns != want.get("mtime_ns"):
            result["rehashed"] += 1
            if sha256_file(os.path.join(root, rel)) != want["sha256"]:
                result["modified"].append(rel)
    return result


def is_clean(result):
    return not (result["missing"] or result["unexpected"] or result["modified"])


def load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def dump(manifest):
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"
