#!/usr/bin/env python3
"""gen_manifests.py STORE COUNT URL_BASE: writes COUNT pending v1 manifests
(bench-00000 ... ) straight into STORE/manifests. Their digests are made up
and their blobs never fetched: they only populate the directory."""
import hashlib
import json
import os
import sys


def main():
    store, count, base = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")
    d = os.path.join(store, "manifests")
    os.makedirs(d, exist_ok=True)
    for i in range(count):
        name = f"bench-{i:05d}"
        m = {
            "schema_version": 1,
            "name": name,
            "format": "gguf",
            "blob": "sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            "size_bytes": 1 << 30,
            "license": None,
            "source": {
                "registry": "",
                "repo": "",
                "revision": "",
                "filename": f"{name}.gguf",
                "url": f"{base}/none/{name}.gguf",
            },
            "produced_by": "modelfs-bench",
            "produced_at": "2026-01-01T00:00:00Z",
        }
        with open(os.path.join(d, name + ".json"), "w") as f:
            json.dump(m, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
