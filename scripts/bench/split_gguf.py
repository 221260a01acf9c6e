#!/usr/bin/env python3
"""split_gguf.py OUT_DIR PREFIX TOTAL_BYTES N: a split GGUF of N shards.

Writes OUT_DIR/PREFIX-0000k-of-0000N.gguf (k = 1..N), named as llama.cpp's
`llama_split_path` names them, each a GGUF v3 file of about TOTAL_BYTES / N
bytes with the keys llama.cpp's gguf-split writes (`split.no` and
`split.count` as u16, `split.tensors.count` as i32) and F32 tensors
`blk.I.weight` numbered across the set, their data scripts/make_gguf.py's
pseudo-random stream (seed k). Standard library only. Prints one line per
shard: its path and SHA-256.
"""
import hashlib
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_gguf as mg  # noqa: E402

T_UINT16 = 2
T_INT32 = 5


def kv_u16(key, v):
    return mg._gguf_string(key) + struct.pack("<IH", T_UINT16, v)


def kv_i32(key, v):
    return mg._gguf_string(key) + struct.pack("<Ii", T_INT32, v)


def shard_sizes(total, n):
    """The tensor sizes of each shard (multiples of the alignment)."""
    per = max(total // n - 4096, mg.ALIGNMENT)
    return [mg._split(mg._align(per)) for _ in range(n)]


def write_shard(path, k, n, sizes, first, total_tensors):
    kvs = [
        mg._kv("general.architecture", mg.T_STRING, mg.ARCHITECTURE),
        mg._kv("general.name", mg.T_STRING, "modelfs split bench"),
        mg._kv("general.alignment", mg.T_UINT32, mg.ALIGNMENT),
        mg._kv("general.file_type", mg.T_UINT32, 0),
        kv_u16("split.no", k),
        kv_u16("split.count", n),
        kv_i32("split.tensors.count", total_tensors),
    ]
    infos, offset = [], 0
    for i, nbytes in enumerate(sizes):
        shape = mg._shape_for(nbytes)
        info = mg._gguf_string("blk.%d.weight" % (first + i)) + struct.pack("<I", len(shape))
        info += b"".join(struct.pack("<Q", d) for d in shape)
        info += struct.pack("<IQ", mg.GGML_TYPE_F32, offset)
        infos.append(info)
        offset += mg._align(nbytes)
    head = mg.GGUF_MAGIC + struct.pack("<IQQ", mg.GGUF_VERSION, len(sizes), len(kvs))
    head += b"".join(kvs) + b"".join(infos)
    prefix = head + b"\0" * (mg._align(len(head)) - len(head))
    digest = hashlib.sha256(prefix)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "wb", buffering=0) as f:
        f.write(prefix)
        for chunk in mg.data_stream(k + 1, offset):
            f.write(chunk)
            digest.update(chunk)
    os.replace(tmp, path)
    return digest.hexdigest()


def main():
    out, prefix, total, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if not 1 <= n <= 65535:
        sys.exit("N must be 1..65535 (llama.cpp's split.count is a u16)")
    sizes = shard_sizes(total, n)
    count = sum(len(s) for s in sizes)
    first = 0
    for k in range(n):
        path = os.path.join(out, "%s-%05d-of-%05d.gguf" % (prefix, k + 1, n))
        print(path, write_shard(path, k, n, sizes[k], first, count))
        first += len(sizes[k])


if __name__ == "__main__":
    main()
