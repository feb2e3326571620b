#!/usr/bin/python
"""Write or verify the sha256 manifest of a staged model."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_model_manifest
short_description: Write or verify the sha256 manifest of a staged model
description:
  - Records every file of a model directory with its size and sha256 after the model
    was staged, and on later runs verifies the directory against that record.
  - A directory that no longer matches its manifest fails the task with the list of
    missing, unexpected and modified files; nothing is rewritten unless O(rewrite) is set.
options:
  path:
    description: Model directory.
    type: path
    required: true
  manifest:
    description: Manifest file (JSON), kept outside the model directory.
    type: path
    required: true
  source:
    description: Where the model came from (recorded in the manifest; a different source means a re-stage).
    type: str
    required: true
  rewrite:
    description: Record the directory as it is now (after staging changed it).
    type: bool
    default: false
  full:
    description: Re-hash every file instead of only those whose size or mtime changed.
    type: bool
    default: false
  owner:
    description: Owner of the manifest file.
    type: str
  group:
    description: Group of the manifest file.
    type: str
  mode:
    description: Mode of the manifest file.
    type: raw
    default: "0640"
"""

EXAMPLES = r"""
- name: Record or verify the model
  vllm_model_manifest:
    path: /srv/vllm/models/llama
    manifest: /srv/vllm/models/llama.manifest.json
    source: hf:meta-llama/Llama-3.1-8B-Instruct@0e9e39f
    rewrite: "{{ __stage is changed }}"
"""

RETURN = r"""
files:
  description: Number of files in the manifest.
  type: int
  returned: success
rehashed:
  description: Files whose sha256 was computed during verification.
  type: int
  returned: success
source:
  description: Source recorded in the manifest.
  type: str
  returned: success
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vllm_fleet.manifest import build, dump, is_clean, load, verify


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            manifest=dict(type="path", required=True),
            source=dict(type="str", required=True),
            rewrite=dict(type="bool", default=False),
            full=dict(type="bool", default=False),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw", default="0640"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isdir(p["path"]):
        if module.check_mode:
            module.exit_json(
                changed=True, files=0, rehashed=0, source=p["source"], msg="model directory not staged yet"
            )
        module.fail_json(msg="model directory %s does not exist" % p["path"])

    current = load(p["manifest"]) if os.path.exists(p["manifest"]) else None
    needs_write = p["rewrite"] or current is None or current.get("source") != p["source"]
    changed = False
    if needs_write:
        manifest = build(p["path"], p["source"])
        text = dump(manifest)
        old = dump(current) if current is not None else None
        changed = text != old
        if changed and not module.check_mode:
            tmp = p["manifest"] + ".tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, p["manifest"])
        rehashed = len(manifest["files"])
    else:
        manifest = current
        result = verify(p["path"], current, full=p["full"])
        if not is_clean(result):
            module.fail_json(
                msg="model %s does not match its manifest %s: missing=%s unexpected=%s modified=%s"
                % (p["path"], p["manifest"], result["missing"], result["unexpected"], result["modified"]),
                **result,
            )
        rehashed = result["rehashed"]

    if os.path.exists(p["manifest"]):
        file_args = module.load_file_common_arguments(
            dict(path=p["manifest"], owner=p["owner"], group=p["group"], mode=p["mode"])
        )
        changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, files=len(manifest["files"]), rehashed=rehashed, source=manifest["source"])


if __name__ == "__main__":
    main()
