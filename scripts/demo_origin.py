#!/usr/bin/env python3
"""A small HTTPS file server for the modelfs demo and benchmarks.

Serves the files of --dir over HTTPS on 127.0.0.1 with Range support, an
optional rate limit (so a demo download is slow enough to watch), a simple
directory listing, and a request log (one JSON line per request) that the
benchmark reads to count GETs. Standard library only.

    demo_origin.py --dir DIR --cert CERT --key KEY [--port 0] [--rate BYTES_PER_S]
                   [--port-file FILE] [--log FILE]
"""
import argparse, html, json, os, re, ssl, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 256 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the request log is below
        pass

    def _record(self, status, sent):
        if self.server.log:
            line = json.dumps({"method": self.command, "path": self.path, "status": status,
                               "range": self.headers.get("Range"), "bytes": sent})
            with self.server.log_lock, open(self.server.log, "a") as f:
                f.write(line + "\n")

    def _target(self):
        rel = self.path.split("?", 1)[0].lstrip("/")
        full = os.path.realpath(os.path.join(self.server.root, rel))
        if not (full + os.sep).startswith(self.server.root + os.sep) and full != self.server.root:
            return None
        return full

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        path = self._target()
        if path and os.path.isdir(path):
            names = sorted(os.listdir(path))
            page = "".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a><br>\n' for n in names).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)
            self._record(200, len(page) if body else 0)
            return
        if not path or not os.path.isfile(path):
            self.send_error(404)
            self._record(404, 0)
            return
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(416, 0)
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(os.path.getmtime(path)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            t0 = time.monotonic()
            with open(path, "rb") as f:
                f.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        break
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                        break
                    sent += len(chunk)
                    left -= len(chunk)
                    if self.server.rate:
                        ahead = sent / self.server.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        self._record(status, sent)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rate", type=float, default=0, help="bytes per second per response (0 = unlimited)")
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    a = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.root = os.path.realpath(a.dir)
    srv.rate = a.rate
    srv.log = a.log
    srv.log_lock = threading.Lock()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(a.port_file + ".tmp", a.port_file)
    print(port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
