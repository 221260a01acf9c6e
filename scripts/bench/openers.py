#!/usr/bin/env python3
"""openers.py N PATH [READ_BYTES]: N processes open PATH at the same moment.

Each child blocks on a start gate, then open()s PATH and reads READ_BYTES
(default 1 MiB) from it. Prints one line per opener: the seconds from the
moment the gate opened to the end of its read (CLOCK_MONOTONIC is shared by
all processes). Exits 1 if any opener failed.
"""
import os
import sys
import time


def main():
    n = int(sys.argv[1])
    path = sys.argv[2]
    want = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 20
    gate_r, gate_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.close(res_r)
            code = 0
            try:
                os.read(gate_r, 1)
                fd = os.open(path, os.O_RDONLY)
                left = want
                while left > 0:
                    b = os.read(fd, min(left, 1 << 20))
                    if not b:
                        break
                    left -= len(b)
                end = time.monotonic()
                os.close(fd)
                msg = f"ok {end!r}\n"
            except OSError as e:
                msg = f"err {e}\n"
                code = 1
            os.write(res_w, msg.encode())
            os._exit(code)
        pids.append(pid)
    os.close(gate_r)
    os.close(res_w)
    time.sleep(0.3)  # let every child reach the gate
    start = time.monotonic()
    os.write(gate_w, b"x" * n)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed += 1
    out = b""
    while True:
        chunk = os.read(res_r, 65536)
        if not chunk:
            break
        out += chunk
    for line in out.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "ok":
            print(f"{float(rest) - start:.6f}")
        else:
            print(f"opener failed: {rest}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
