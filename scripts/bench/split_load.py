#!/usr/bin/env python3
"""split_load.py PATH: loads a GGUF the way llama.cpp does, split or not.

Opens PATH, reads `split.no` and `split.count` from its header (standard
library GGUF parsing; a file without them is one shard), derives the prefix
as `llama_split_prefix` does, rebuilds each shard's name as
`llama_split_path` does (`%s-%05d-of-%05d.gguf`) and reads every shard in
order, start to end (llama.cpp opens shard 1, then 2, 3, ... in sequence).
Prints the number of shards and bytes read. llama.cpp itself is not
packaged for Debian 12; this is its file access pattern, not its compute.
"""
import struct
import sys

# GGUF value type -> fixed size in bytes (8 string, 9 array are variable).
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
INTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


class Reader:
    def __init__(self, f):
        self.f = f

    def take(self, n):
        b = self.f.read(n)
        if len(b) != n:
            raise EOFError("truncated GGUF header")
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64()).decode("utf-8", "replace")

    def value(self, t):
        if t in INTS:
            return struct.unpack(INTS[t], self.take(FIXED[t]))[0]
        if t in FIXED:
            self.take(FIXED[t])
            return None
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.u32(), self.u64()
            for _ in range(n):
                self.value(et)
            return None
        raise ValueError("unknown GGUF value type %d" % t)


def split_info(path):
    with open(path, "rb") as f:
        r = Reader(f)
        if r.take(4) != b"GGUF":
            raise ValueError("%s is not a GGUF file" % path)
        r.u32()
        r.u64()
        kv = {}
        for _ in range(r.u64()):
            key = r.string()
            kv[key] = r.value(r.u32())
    return kv.get("split.no", 0), kv.get("split.count", 1)


def main():
    path = sys.argv[1]
    no, n = split_info(path)
    if no != 0:
        sys.exit("model must be loaded with the first split (split.no is %d)" % no)
    names = [path]
    if n > 1:
        postfix = "-%05d-of-%05d.gguf" % (no + 1, n)
        if not path.endswith(postfix) or len(path) == len(postfix):
            sys.exit("invalid split file name: %s" % path)
        prefix = path[: -len(postfix)]
        names = ["%s-%05d-of-%05d.gguf" % (prefix, i + 1, n) for i in range(n)]
    total = 0
    buf = bytearray(1 << 20)
    for p in names:
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                total += k
    print(len(names), total)


if __name__ == "__main__":
    main()
