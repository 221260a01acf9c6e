#!/usr/bin/env python3
"""Write a small-or-large, valid GGUF v3 file with deterministic content.

Usage:
    python3 scripts/make_gguf.py OUT_PATH SIZE_BYTES [--seed N] [--info]

The file is at least SIZE_BYTES long (at most 32 bytes more, except that the
smallest possible file is a header plus one 32-byte tensor). It holds:

* the GGUF v3 header (magic ``GGUF``, version 3, tensor count, KV count);
* metadata: ``general.architecture`` = "modelfs-demo", ``general.name``,
  ``general.alignment`` (u32 32), ``general.file_type`` (u32 0, all F32),
  ``modelfs.seed`` (u64), ``modelfs.target_size`` (u64);
* F32 tensors ``blk.N.weight`` of at most 64 MiB each (shape [4096, rows],
  the last one possibly narrower), data aligned to 32 bytes.

Tensor data is one pseudo-random byte stream (``random.Random(seed)``, 1 MiB
at a time) with bit 30 of every little-endian u32 cleared, so every value is
a finite float in (-2, 2). The same SIZE_BYTES and seed always give the same
file. Only the standard library is used; 2 GiB takes a few seconds.

``--info`` prints a JSON summary (size, sha256, data offset, tensors with
their absolute file offsets) on stdout.

Importable: ``write_gguf(path, size, seed=0) -> dict`` (the same summary).
"""

import argparse
import hashlib
import json
import os
import random
import struct
import sys

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
ARCHITECTURE = "modelfs-demo"

# GGUF metadata value types.
T_UINT32 = 4
T_STRING = 8
T_UINT64 = 10

GGML_TYPE_F32 = 0

MAX_TENSOR_BYTES = 64 * 1024 * 1024  # 4096 x 4096 f32
CHUNK = 1 << 20
# Clears bit 6 of the most significant byte of each little-endian f32 (bit
# 30, the top exponent bit): exponent <= 127, so |x| < 2 and never inf/NaN.
_MASK_TABLE = bytes(b & 0xBF for b in range(256))


def _align(n, a=ALIGNMENT):
    return (n + a - 1) // a * a


def _gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, value):
    out = _gguf_string(key) + struct.pack("<I", vtype)
    if vtype == T_STRING:
        out += _gguf_string(value)
    elif vtype == T_UINT32:
        out += struct.pack("<I", value)
    elif vtype == T_UINT64:
        out += struct.pack("<Q", value)
    else:
        raise ValueError(vtype)
    return out


def _shape_for(nbytes):
    """A 2-D shape [ne0, ne1] (GGUF order) for an F32 tensor of nbytes."""
    n = nbytes // 4
    for ne0 in (4096, 1024, 256, 64, 8):
        if n % ne0 == 0:
            return [ne0, n // ne0]
    return [n]


def _header(size, seed, tensor_sizes):
    """Header bytes (unpadded) for the given tensor data sizes."""
    kvs = [
        _kv("general.architecture", T_STRING, ARCHITECTURE),
        _kv("general.name", T_STRING, "modelfs demo %d bytes seed %d" % (size, seed)),
        _kv("general.alignment", T_UINT32, ALIGNMENT),
        _kv("general.file_type", T_UINT32, 0),
        _kv("modelfs.seed", T_UINT64, seed),
        _kv("modelfs.target_size", T_UINT64, size),
    ]
    infos = []
    offset = 0
    tensors = []
    for i, nbytes in enumerate(tensor_sizes):
        name = "blk.%d.weight" % i
        shape = _shape_for(nbytes)
        info = _gguf_string(name) + struct.pack("<I", len(shape))
        info += b"".join(struct.pack("<Q", d) for d in shape)
        info += struct.pack("<IQ", GGML_TYPE_F32, offset)
        infos.append(info)
        tensors.append({"name": name, "shape": shape, "offset": offset, "nbytes": nbytes})
        offset += _align(nbytes)
    head = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensor_sizes), len(kvs))
    head += b"".join(kvs) + b"".join(infos)
    return head, tensors


def _split(nbytes):
    sizes = [MAX_TENSOR_BYTES] * (nbytes // MAX_TENSOR_BYTES)
    if nbytes % MAX_TENSOR_BYTES:
        sizes.append(nbytes % MAX_TENSOR_BYTES)
    return sizes


def _layout(size, seed):
    sizes = [ALIGNMENT]
    for _ in range(16):
        head, _t = _header(size, seed, sizes)
        data_start = _align(len(head))
        need = _align(max(size - data_start, ALIGNMENT))
        new_sizes = _split(need)
        if new_sizes == sizes:
            break
        sizes = new_sizes
    head, tensors = _header(size, seed, sizes)
    return head, tensors


def data_stream(seed, nbytes):
    """Yield the tensor data bytes (masked pseudo-random), CHUNK at a time."""
    rng = random.Random(seed)
    left = nbytes
    while left > 0:
        n = min(CHUNK, left)
        block = bytearray(rng.randbytes(CHUNK))
        block[3::4] = block[3::4].translate(_MASK_TABLE)
        yield bytes(block[:n]) if n < CHUNK else bytes(block)
        left -= n


def write_gguf(path, size, seed=0, sha256=False):
    """Write a GGUF v3 file of at least `size` bytes; return a summary dict.

    The summary has: path, size (actual), seed, data_offset (absolute offset
    of the tensor data section), tensors (name, shape in GGUF ne order,
    offset relative to the data section, abs_offset, nbytes) and, if
    `sha256` is true, the file's sha256 hex digest.
    """
    size = int(size)
    if size < 0:
        raise ValueError("size must be >= 0")
    head, tensors = _layout(size, seed)
    data_offset = _align(len(head))
    data_len = sum(_align(t["nbytes"]) for t in tensors)
    digest = hashlib.sha256() if sha256 else None
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "wb", buffering=0) as f:
        prefix = head + b"\0" * (data_offset - len(head))
        f.write(prefix)
        if digest:
            digest.update(prefix)
        # Every tensor size is a multiple of ALIGNMENT, so the tensors are
        # contiguous and the data section is one stream.
        for chunk in data_stream(seed, data_len):
            f.write(chunk)
            if digest:
                digest.update(chunk)
    os.replace(tmp, path)
    for t in tensors:
        t["abs_offset"] = data_offset + t["offset"]
    info = {
        "path": str(path),
        "size": data_offset + data_len,
        "seed": seed,
        "data_offset": data_offset,
        "tensors": tensors,
    }
    if digest:
        info["sha256"] = digest.hexdigest()
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a deterministic GGUF v3 test file.")
    p.add_argument("out_path")
    p.add_argument("size_bytes", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--info", action="store_true", help="print a JSON summary (with sha256)")
    a = p.parse_args(argv)
    info = write_gguf(a.out_path, a.size_bytes, a.seed, sha256=a.info)
    if a.info:
        json.dump(info, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
