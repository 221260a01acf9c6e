#!/usr/bin/env bash
# The main job, end to end, with no internet: builds modelfs, starts an HTTPS
# origin on 127.0.0.1 (throwaway CA) serving a real GGUF generated on the
# spot, pins it with `modelfs add` (nothing downloaded), mounts the store,
# and shows the first open fetching and verifying it while `modelfs status`
# follows along. Then a second read at disk speed, and cleanup.
#
#   scripts/demo.sh               # 256 MiB model served at 64 MiB/s
#   SIZE_MIB=1024 RATE_MIB=200 KEEP=1 scripts/demo.sh   # keep it mounted
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-256}
RATE_MIB=${RATE_MIB:-64}

scripts/deps.sh
cargo build --release --quiet
BIN=$PWD/target/release/modelfs
DEMO=$(mktemp -d /tmp/modelfs-demo.XXXXXX)
export MODELS_HOME=$DEMO/store
MNT=$DEMO/models
mkdir -p "$DEMO/origin" "$MNT" "$MODELS_HOME"

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
    [ -n "${ORIGIN_PID:-}" ] && kill "$ORIGIN_PID" 2>/dev/null || true
    rm -rf "$DEMO"
  fi
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "generating a ${SIZE_MIB} MiB GGUF and an HTTPS origin on 127.0.0.1 (rate ${RATE_MIB} MiB/s)"
python3 scripts/make_gguf.py "$DEMO/origin/demo-llama.gguf" $((SIZE_MIB << 20))
scripts/make_ca.sh "$DEMO/tls"
python3 scripts/demo_origin.py --dir "$DEMO/origin" --cert "$DEMO/tls/cert.pem" --key "$DEMO/tls/key.pem" \
  --rate $((RATE_MIB << 20)) --port-file "$DEMO/port" --log "$DEMO/origin.log" >/dev/null &
ORIGIN_PID=$!
for _ in $(seq 100); do [ -s "$DEMO/port" ] && break; sleep 0.1; done
URL="https://127.0.0.1:$(cat "$DEMO/port")/demo-llama.gguf"
SHA=$(sha256sum "$DEMO/origin/demo-llama.gguf" | cut -d' ' -f1)

say "modelfs add: pin the model (writes a pending manifest, downloads nothing)"
"$BIN" add demo-llama --url "$URL" --sha256 "$SHA" --ca-file "$DEMO/tls/ca.pem"
"$BIN" ls

say "modelfs mount $MNT (daemon; returns once the mount is live)"
"$BIN" mount "$MNT" -o "ca_file=$DEMO/tls/ca.pem,log_file=$DEMO/mount.log"
ls -l "$MNT"
getfattr -d -m user.modelfs "$MNT/demo-llama.gguf"

say "first open: sha256sum through the mount waits while modelfs fetches and verifies"
start=$(date +%s.%N)
sha256sum "$MNT/demo-llama.gguf" > "$DEMO/sum" &
SUM_PID=$!
sleep 0.5
"$BIN" status "$MNT" --watch
wait $SUM_PID
end=$(date +%s.%N)
GOT=$(cut -d' ' -f1 "$DEMO/sum")
echo "sha256 through the mount: $GOT"
echo "sha256 at the origin:     $SHA"
[ "$GOT" = "$SHA" ] || { echo "MISMATCH"; exit 1; }
printf 'first open + read: %.1f s\n' "$(echo "$end - $start" | bc -l 2>/dev/null || python3 -c "print($end-$start)")"

say "second read: local disk speed"
python3 - "$MNT/demo-llama.gguf" <<'PY'
import sys, time
t = time.monotonic(); n = 0
with open(sys.argv[1], "rb") as f:
    while b := f.read(1 << 20):
        n += len(b)
dt = time.monotonic() - t
print(f"read {n >> 20} MiB in {dt:.2f} s ({n / dt / (1 << 20):.0f} MiB/s)")
PY
if python3 -c "import gguf" 2>/dev/null; then
  python3 -c "
from gguf import GGUFReader
r = GGUFReader('$MNT/demo-llama.gguf')
print('gguf reader:', len(r.tensors), 'tensors, arch', bytes(r.fields['general.architecture'].parts[-1]).decode())"
fi
"$BIN" status "$MNT"
echo
echo "origin requests: $(grep -c '"GET"' "$DEMO/origin.log") GET(s)"
if [ "${KEEP:-0}" = 1 ]; then
  echo "kept: mount at $MNT, store at $MODELS_HOME (unmount with: fusermount3 -u $MNT)"
fi
say "demo OK"
