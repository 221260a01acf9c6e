#!/usr/bin/env python3
"""delay_line.py NS_CLIENT DEV_CLIENT NS_ORIGIN DEV_ORIGIN DELAY_MS LOSS_PCT READY_FILE

Row 12's WAN-like link, for kernels without netem: a TUN device in each of
two network namespaces (by name, /run/netns/NS), joined by this process.
Packets from the origin's side are held DELAY_MS and dropped with
probability LOSS_PCT / 100 (what `netem delay D loss L` on the origin's
interface does); packets from the client's side pass at once. The delay is
constant, so a FIFO per direction keeps the order. Writes READY_FILE once
both devices exist (bench.sh then gives them addresses and brings them up)
and runs until killed; the devices vanish with the process."""
import collections
import ctypes
import fcntl
import os
import random
import select
import struct
import sys
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000

libc = ctypes.CDLL(None, use_errno=True)


def tun_in(ns, dev):
    """A TUN device named DEV, created inside network namespace NS."""
    nsfd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    if libc.setns(nsfd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns into {ns}")
    os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    ns_c, dev_c, ns_o, dev_o, delay_ms, loss_pct, ready = sys.argv[1:8]
    delay, loss = float(delay_ms) / 1000, float(loss_pct) / 100
    fd_c, fd_o = tun_in(ns_c, dev_c), tun_in(ns_o, dev_o)
    with open(ready, "w") as f:
        f.write("ready\n")
    held = collections.deque()  # (due, packet), origin -> client
    rnd = random.Random(13)
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([fd_c, fd_o], [], [], timeout)
        for fd in readable:
            for _ in range(64):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if fd == fd_c:
                    write(fd_o, pkt)
                elif rnd.random() >= loss:
                    held.append((time.monotonic() + delay, pkt))
        now = time.monotonic()
        while held and held[0][0] <= now:
            write(fd_c, held.popleft()[1])


def write(fd, pkt):
    try:
        os.write(fd, pkt)
    except (BlockingIOError, OSError):
        pass  # a full device queue drops the packet, as a full router would


if __name__ == "__main__":
    main()
