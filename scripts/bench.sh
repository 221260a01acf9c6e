#!/usr/bin/env bash
# bench.sh [SIZE_MIB]: the benchmark of issue 5, on this machine, in one go.
#
# Builds modelfs (release), generates a GGUF of SIZE_MIB (default 2048; the
# SIZE_MIB environment variable works too), serves it from nginx over HTTPS
# on 127.0.0.1 (throwaway CA, own config and prefix in a temp dir), and
# measures rows 1-10 of the issue's table (11-12 of issue 13, 13-14 of issue 14, 16 of issue 16), each several times (RUNS, default
# 5; 3 in smoke mode, i.e. SIZE_MIB < 512). Prints one table and writes
# bench-results.json (OUT_JSON overrides the path). Everything it starts
# (mounts, nginx, rclone, temp dirs) is cleaned up on exit, also on failure.
#
#   scripts/bench.sh                 # 2 GiB model, the numbers in BENCHMARKS.md
#   SIZE_MIB=64 scripts/bench.sh     # smoke run (CI)
#   ROWS="1 3" RUNS=2 scripts/bench.sh 256   # a subset, while working on one row
#   MOUNT_OPTS=connections=1 ROWS=4 scripts/bench.sh   # extra -o options for every mount
#   MODELFS_BIN=/tmp/proto/target/release/modelfs scripts/bench.sh   # another build
#   LOGS_TO=/tmp/bench-logs ROWS=12 scripts/bench.sh   # keep the daemons' and tools' logs
#
# Needs root (drop_caches, FUSE passthrough). Installs nginx, rclone, curl, aria2,
# fuse3, attr, openssl and python3 with apt-get when they are missing. There
# are no pass/fail thresholds: the exit status is non-zero only when
# something could not be measured.
#
# This script only sets up, measures and tears down: it records what it read
# (nanoseconds, KiB, clock ticks, counters before and after) in samples.tsv,
# and scripts/bench/report.py does every conversion, ratio and line of output
# about the numbers (`show` for the progress line of each run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SIZE_MIB=${1:-${SIZE_MIB:-2048}}
if ! [[ $SIZE_MIB =~ ^[0-9]+$ ]] || [ "$SIZE_MIB" -lt 1 ]; then
  echo "bench.sh: SIZE_MIB must be a positive number of MiB, got '$SIZE_MIB'" >&2
  exit 2
fi
SMOKE=0
[ "$SIZE_MIB" -lt 512 ] && SMOKE=1
if [ "$SMOKE" = 1 ]; then RUNS=${RUNS:-3}; else RUNS=${RUNS:-5}; fi
ROWS=${ROWS:-1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16}
OUT_JSON=${OUT_JSON:-$ROOT/bench-results.json}
MANIFESTS=${MANIFESTS:-10000}
BIG_MANIFESTS=${BIG_MANIFESTS:-100000}
TOUCHES=20000
CONCURRENT=32
SIZE_BYTES=$((SIZE_MIB << 20))
T_START=$(date +%s)

if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then
    exec sudo -E SIZE_MIB="$SIZE_MIB" "$0"
  fi
  echo "bench.sh: needs root (drop_caches, FUSE passthrough) and sudo is missing" >&2
  exit 1
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
die() {
  echo "bench.sh: $*" >&2
  exit 1
}
want_row() { [[ " $ROWS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools
say "tools"
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v getfattr >/dev/null || need+=(attr)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v pgrep >/dev/null || need+=(procps)
if want_row 11 || want_row 12; then command -v aria2c >/dev/null || need+=(aria2); fi
if want_row 12; then command -v tc >/dev/null || need+=(iproute2); fi
if [ "${#need[@]}" -gt 0 ]; then
  info "installing: ${need[*]}"
  apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"
fi
RCLONE_SKIPPED=""
if want_row 9 && ! command -v rclone >/dev/null; then
  info "installing: rclone"
  if ! apt_install rclone; then
    [ "$SMOKE" = 1 ] || die "apt-get install rclone failed (row 9 needs it)"
    RCLONE_SKIPPED="rclone could not be installed with apt-get"
    echo "   row 9 skipped: $RCLONE_SKIPPED"
  fi
fi
want_row 9 || RCLONE_SKIPPED="not selected (ROWS)"
[ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches (needed for the cold rows)"
command -v cargo >/dev/null || die "cargo is missing (install Rust with rustup)"

if [ -n "${MODELFS_BIN:-}" ]; then
  # Benchmark another build (a prototype) without rebuilding this tree.
  BIN=$(realpath "$MODELFS_BIN")
  [ -x "$BIN" ] || die "MODELFS_BIN=$MODELFS_BIN is not an executable"
  say "using MODELFS_BIN=$BIN"
else
  say "cargo build --release"
  cargo build --release --quiet
  BIN=$ROOT/target/release/modelfs
fi

# ---------------------------------------------------------------- workspace and cleanup
WORK=$(mktemp -d /tmp/modelfs-bench.XXXXXX)
mkdir -p "$WORK/logs" "$WORK/origin" "$WORK/mnt"
SAMPLES=$WORK/samples.tsv
META=$WORK/meta.tsv
: >"$SAMPLES"
: >"$META"
MOUNTS=()
declare -A MOUNT_PID=()
BG_PIDS=()
NGINX_CONF=""
NMOUNT=0
NETNS_MADE=() # row 12's network namespaces, deleted on exit
# Free page reporting (virtio-balloon) hands freed memory back to the host,
# and the next touch of it faults in the host: writing a file into such
# pages costs up to twice the CPU. Which side of a comparison gets them is
# chance, so on a VM that reports, reporting is held off for the run (no
# block is ever of order 11) and restored on exit. KEEP_PAGE_REPORTING=1
# leaves it alone.
REPORTING=/sys/module/page_reporting/parameters/page_reporting_order
REPORTING_WAS=""

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for p in "${BG_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for m in "${MOUNTS[@]}"; do
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  for m in "${MOUNTS[@]}"; do
    local pid=${MOUNT_PID[$m]:-}
    [ -n "$pid" ] || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  if [ -n "$NGINX_CONF" ] && [ -s "$WORK/nginx/nginx.pid" ]; then
    kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null
    for _ in $(seq 50); do [ -s "$WORK/nginx/nginx.pid" ] || break; sleep 0.1; done
  fi
  if [ -s "$WORK/nginx-wan/nginx.pid" ]; then
    kill "$(cat "$WORK/nginx-wan/nginx.pid")" 2>/dev/null
    for _ in $(seq 50); do [ -s "$WORK/nginx-wan/nginx.pid" ] || break; sleep 0.1; done
  fi
  for ns in "${NETNS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ -n "$REPORTING_WAS" ] && echo "$REPORTING_WAS" >"$REPORTING"
  if [ -n "${LOGS_TO:-}" ] && [ -d "$WORK/logs" ]; then
    mkdir -p "$LOGS_TO" && cp -r "$WORK/logs/." "$LOGS_TO/"
    for l in "$WORK"/nginx*/access.log; do [ -f "$l" ] && cp "$l" "$LOGS_TO/$(basename "$(dirname "$l")")-access.log"; done
  fi
  if grep -q " $WORK/" /proc/mounts; then
    echo "bench.sh: mounts under $WORK are still there; leaving $WORK" >&2
  else
    rm -rf --one-file-system "$WORK"
  fi
  [ $rc = 0 ] || echo "bench.sh: failed (exit $rc); everything it started was cleaned up" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SAMPLES"; }
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
now_ns() { date +%s%N; }
# ns_since T0: nanoseconds elapsed since T0 (a now_ns reading).
ns_since() { echo $(($(now_ns) - $1)); }
# show ROW MODE RUN [SUFFIX]: the progress line of that run, from the samples.
show() { python3 scripts/bench/report.py show "$WORK" "$@"; }
# tcat FILE: nanoseconds to read FILE once with cat.
tcat() {
  local t0
  t0=$(now_ns)
  cat "$1" >/dev/null
  ns_since "$t0"
}
drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}
cached_kib() { awk '/^Cached:/ { print $2 }' /proc/meminfo; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# ticks_of PID...: clock ticks of CPU (user + system) the processes used so far.
ticks_of() { awk '{ t += $14 + $15 } END { print t }' $(printf '/proc/%s/stat ' "$@"); }
nginx_workers() { pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | tr '\n' ' '; }
gets_of() { grep -c "^GET $1 " "${2:-$WORK/nginx/access.log}" || true; }
# sent_of URI [LOG]: the access log's body bytes sent for GETs of URI so far.
sent_of() { awk -v u="$1" '$1 == "GET" && $2 == u { n += $4 } END { printf "%.0f\n", n }' "${2:-$WORK/nginx/access.log}"; }
# aria2 URL OUT LOG [ARGS...]: aria2c -x16 -s16 -k1M downloading URL to OUT.
# falloc: what aria2's manual advises on ext4 (its default writes zeros first).
aria2() {
  local url=$1 out=$2 log=$3
  shift 3
  "${NETNS_EXEC[@]}" aria2c -x16 -s16 -k1M --ca-certificate="$WORK/tls/ca.pem" \
    --file-allocation=falloc --allow-overwrite=true --auto-file-renaming=false \
    --summary-interval=0 --console-log-level=warn -d "$(dirname "$out")" -o "$(basename "$out")" \
    "$@" "$url" >>"$log" 2>&1 || die "aria2c of $url failed (see $log)"
}
NETNS_EXEC=()

# mfs_mount STORE MNT pt|off: mounts modelfs (daemon mode) and records its pid.
mfs_mount() {
  local store=$1 mnt=$2 mode=$3 opts
  NMOUNT=$((NMOUNT + 1))
  opts="ca_file=$WORK/tls/ca.pem,log_file=$WORK/logs/mount-$NMOUNT.log"
  [ "$mode" = off ] && opts+=",passthrough=off"
  opts+="${MOUNT_OPTS:+,$MOUNT_OPTS}"
  mkdir -p "$mnt"
  "${NETNS_EXEC[@]}" "$BIN" mount "$mnt" --store "$store" -o "$opts"
  MOUNTS+=("$mnt")
  MOUNT_PID[$mnt]=$(pgrep -n -f -- "modelfs mount $mnt --store") || die "cannot find the daemon of $mnt"
  MOUNT_LOG[$mnt]=$WORK/logs/mount-$NMOUNT.log
}
declare -A MOUNT_LOG=()

forget_mount() {
  local m keep=()
  for m in "${MOUNTS[@]}"; do [ "$m" = "$1" ] || keep+=("$m"); done
  MOUNTS=("${keep[@]}")
}

# unmount MNT: unmounts modelfs or rclone and waits for its server to exit.
unmount() {
  local mnt=$1 pid=${MOUNT_PID[$1]:-}
  local i
  for i in $(seq 50); do
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null && break
    [ "$i" = 50 ] && die "cannot unmount $mnt"
    sleep 0.2
  done
  forget_mount "$mnt"
  if [ -n "$pid" ]; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "the server of $mnt (pid $pid) did not exit after unmount"
  fi
  unset "MOUNT_PID[$mnt]"
  return 0
}

# pending_store DIR [URL]: a store whose only manifest is the pending `model`.
pending_store() {
  rm -rf "$1"
  "$BIN" add model --url "${2:-$URL}" --sha256 "$SHA" --size "$SIZE_BYTES" --no-facts \
    --store "$1" --ca-file "$WORK/tls/ca.pem" -q >/dev/null
}

blob_in() { echo "$1/blobs/sha256/${SHA:0:2}/$SHA/data"; }

passthrough_active() { grep -q "read mode: kernel passthrough" "${MOUNT_LOG[$1]}"; }

# rclone_mount MNT CACHE_DIR: the origin as an :http: remote, full VFS cache.
RCLONE_N=0
rclone_mount() {
  local mnt=$1 cache=$2
  RCLONE_N=$((RCLONE_N + 1))
  mkdir -p "$mnt" "$cache"
  RCLONE_CONFIG=$WORK/rclone.conf rclone mount :http: "$mnt" \
    --http-url "https://127.0.0.1:$PORT/" --ca-cert "$WORK/tls/ca.pem" \
    --vfs-cache-mode full --cache-dir "$cache" --read-only \
    --log-file "$WORK/logs/rclone-$RCLONE_N.log" --log-level INFO --daemon
  MOUNTS+=("$mnt")
  local i
  for i in $(seq 200); do
    mountpoint -q "$mnt" && [ -e "$mnt/model.gguf" ] && break
    [ "$i" = 200 ] && die "rclone mount at $mnt did not come up (see $WORK/logs/rclone-$RCLONE_N.log)"
    sleep 0.1
  done
  MOUNT_PID[$mnt]=$(pgrep -n -f -- "rclone mount :http: $mnt ") || true
}

# ---------------------------------------------------------------- origin
say "a ${SIZE_MIB} MiB GGUF behind nginx on 127.0.0.1 (TLS, throwaway CA)"
python3 scripts/make_gguf.py "$WORK/origin/model.gguf" "$SIZE_BYTES" >/dev/null
SHA=$(sha256sum "$WORK/origin/model.gguf" | cut -d' ' -f1)
# Row 12's origin listens on WAN_ORIGIN_IP, in a namespace of its own.
WAN_NET=10.213.13
WAN_ORIGIN_IP=$WAN_NET.2
scripts/make_ca.sh "$WORK/tls" "$WAN_ORIGIN_IP"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Throttled location for row 6: a download that lasts ~120 s whatever the size.
SLOW_KIB=$((SIZE_MIB * 1024 / 120))
[ "$SLOW_KIB" -lt 64 ] && SLOW_KIB=64
CAP_MIB=16 # row 11: MiB/s per request
NGX=$WORK/nginx
mkdir -p "$NGX/tmp"
temp_paths="client_body_temp_path $NGX/tmp/body;"
for mod in proxy fastcgi uwsgi scgi; do
  nginx -V 2>&1 | grep -q -- "--without-http_${mod}_module" || temp_paths+=" ${mod}_temp_path $NGX/tmp/$mod;"
done
NGINX_CONF=$NGX/nginx.conf
cat >"$NGINX_CONF" <<EOF
user root root;
worker_processes auto;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 1024; }
http {
  $temp_paths
  default_type application/octet-stream;
  log_format bench '\$request_method \$uri \$status \$body_bytes_sent \$request_time "\$http_range" "\$http_user_agent" \$connection \$connection_requests';
  access_log $NGX/access.log bench;
  sendfile on;
  keepalive_timeout 65;
  server {
    listen 127.0.0.1:$PORT ssl;
    ssl_certificate $WORK/tls/cert.pem;
    ssl_certificate_key $WORK/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $WORK/origin;
    autoindex on;
    location /slow/ {
      alias $WORK/origin/;
      limit_rate ${SLOW_KIB}k;
    }
    # Row 11: an origin that caps each request (a CDN's per-connection
    # limit); the link itself is not capped.
    location /capped/ {
      alias $WORK/origin/;
      limit_rate ${CAP_MIB}m;
    }
  }
}
EOF
nginx -p "$NGX/" -c "$NGINX_CONF" -e "$NGX/error.log" -t -q || die "nginx refused its config"
nginx -p "$NGX/" -c "$NGINX_CONF" -e "$NGX/error.log" || die "nginx did not start (see $NGX/error.log)"
URL="https://127.0.0.1:$PORT/model.gguf"
SLOW_URL="https://127.0.0.1:$PORT/slow/model.gguf"
CAP_URL="https://127.0.0.1:$PORT/capped/model.gguf"
for i in $(seq 50); do
  curl -sS --fail --cacert "$WORK/tls/ca.pem" -o /dev/null -r 0-0 "$URL" 2>/dev/null && break
  [ "$i" = 50 ] && die "nginx does not answer on $URL (see $NGX/error.log)"
  sleep 0.1
done
info "origin: $URL (sha256 ${SHA:0:12}…), throttled copy at ${SLOW_KIB} KiB/s: $SLOW_URL"

MMAP_TOUCH=$WORK/mmap_touch
rustc --edition 2021 -O -o "$MMAP_TOUCH" scripts/bench/mmap_touch.rs
# mmap_ns FILE SEED: nanoseconds for TOUCHES random page touches of FILE.
mmap_ns() { "$MMAP_TOUCH" "$1" "$TOUCHES" "$2" | cut -d' ' -f1; }

# ---------------------------------------------------------------- machine
if [ -w "$REPORTING" ] && [ "${KEEP_PAGE_REPORTING:-0}" != 1 ]; then
  REPORTING_WAS=$(cat "$REPORTING")
  echo 11 >"$REPORTING" || REPORTING_WAS=""
fi
meta page_reporting "$([ -n "$REPORTING_WAS" ] && echo "held off (order $REPORTING_WAS -> 11)" || echo "untouched")"
meta size_mib "$SIZE_MIB"
meta size_bytes "$SIZE_BYTES"
meta runs "$RUNS"
meta smoke "$SMOKE"
meta rows "$ROWS"
meta nproc "$(nproc)"
meta clk_tck "$(getconf CLK_TCK)"
meta row5_openers "$CONCURRENT"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta mem_total_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
meta kernel "$(uname -r)"
meta work_fs "$(df -T "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')"
if [ -n "${MODELFS_BIN:-}" ]; then
  meta modelfs_commit "n/a: MODELFS_BIN"
else
  meta modelfs_commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
fi
meta modelfs_version "$("$BIN" --version 2>/dev/null || echo unknown)"
meta modelfs_bin "$BIN"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta cpu_pressure_start "$(sed -n 1p /proc/pressure/cpu 2>/dev/null || echo n/a)"
meta nginx "$(nginx -v 2>&1 | sed 's/.*: //')"
meta curl "$(curl --version | sed -n '1s/^\(curl [^ ]*\).*/\1/p')"
meta rclone "$(command -v rclone >/dev/null && rclone version 2>/dev/null | sed -n 1p || echo none)"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
[ -n "$RCLONE_SKIPPED" ] && meta rclone_skipped "$RCLONE_SKIPPED"
USE_RCLONE=0
[ -z "$RCLONE_SKIPPED" ] && USE_RCLONE=1

# ---------------------------------------------------------------- rows 1, 2, 3, 8 (a verified model)
if want_row 1 || want_row 2 || want_row 3 || want_row 8 || { [ "$USE_RCLONE" = 1 ] && want_row 9; }; then
  say "a verified store (modelfs import) mounted twice: passthrough and passthrough=off"
  VSTORE=$WORK/vstore
  "$BIN" import "$WORK/origin/model.gguf" --name model --store "$VSTORE" -q >/dev/null
  BLOB=$(blob_in "$VSTORE")
  [ -f "$BLOB" ] || die "import did not produce $BLOB"
  declare -A MNT_OF=([pt]=$WORK/mnt/pt [off]=$WORK/mnt/off)
  mfs_mount "$VSTORE" "${MNT_OF[pt]}" pt
  mfs_mount "$VSTORE" "${MNT_OF[off]}" off
  cat "${MNT_OF[pt]}/model.gguf" "${MNT_OF[off]}/model.gguf" "$BLOB" >/dev/null
  if passthrough_active "${MNT_OF[pt]}"; then meta passthrough_active yes; else
    meta passthrough_active no
    echo "   warning: the default mount did not get kernel passthrough (see ${MOUNT_LOG[${MNT_OF[pt]}]})"
  fi
  RMNT=$WORK/mnt/rclone
  if [ "$USE_RCLONE" = 1 ]; then
    rclone_mount "$RMNT" "$WORK/rclone-cache"
    cat "$RMNT/model.gguf" >/dev/null # downloads it into rclone's cache
  fi
  rclone_on() { [ "$USE_RCLONE" = 1 ] && [ "$1" = pt ]; }

  # seq_reads ROW KIND BEFORE: cat through each mount vs cat of the blob
  # (and through rclone), running BEFORE ahead of every read.
  seq_reads() {
    local row=$1 kind=$2 before=$3 mode f i d m r
    for mode in pt off; do
      f=${MNT_OF[$mode]}/model.gguf
      [ "$row" = 1 ] && cat "$f" "$BLOB" >/dev/null # warm
      for i in $(seq "$RUNS"); do
        $before
        d=$(tcat "$BLOB")
        $before
        m=$(tcat "$f")
        rec "$row" "$mode" direct_ns "$i" "$d"
        rec "$row" "$mode" mount_ns "$i" "$m"
        if rclone_on "$mode"; then
          $before
          r=$(tcat "$RMNT/model.gguf")
          rec 9 rclone "${kind}_ns" "$i" "$r"
          rec 9 modelfs "${kind}_ns" "$i" "$m"
        fi
        show "$row" "$mode" "$i"
      done
    done
  }

  if want_row 1 || { rclone_on pt && want_row 9; }; then
    say "row 1: warm sequential read, cat through the mount vs cat of the blob"
    seq_reads 1 warm :
  fi

  if want_row 2 || { rclone_on pt && want_row 9; }; then
    say "row 2: cold sequential read (drop_caches before each read)"
    seq_reads 2 cold drop_caches
  fi

  if want_row 3 || { rclone_on pt && want_row 9; }; then
    say "row 3: mmap of the whole file, $TOUCHES random 4 KiB page touches, warm"
    for mode in pt off; do
      f=${MNT_OF[$mode]}/model.gguf
      cat "$f" "$BLOB" >/dev/null
      rclone_on "$mode" && cat "$RMNT/model.gguf" >/dev/null
      for i in $(seq "$RUNS"); do
        seed=$((i * 7919))
        d=$(mmap_ns "$BLOB" "$seed")
        m=$(mmap_ns "$f" "$seed")
        rec 3 "$mode" direct_touch_ns "$i" "$d"
        rec 3 "$mode" mount_touch_ns "$i" "$m"
        if rclone_on "$mode"; then
          r=$(mmap_ns "$RMNT/model.gguf" "$seed")
          rec 9 rclone mmap_touch_ns "$i" "$r"
          rec 9 modelfs mmap_touch_ns "$i" "$m"
        fi
        show 3 "$mode" "$i"
      done
    done
  fi

  # rclone is done: unmount it now so that its process cannot add pages
  # to the page cache while row 8 measures it.
  if [ "$USE_RCLONE" = 1 ]; then unmount "$RMNT"; fi
  if want_row 8; then
    say "row 8: page cache added by one read of the verified model (drop_caches first)"
    for mode in pt off; do
      f=${MNT_OF[$mode]}/model.gguf
      for i in $(seq "$RUNS"); do
        drop_caches
        cat /dev/null
        c0=$(cached_kib)
        cat "$f" >/dev/null
        c1=$(cached_kib)
        drop_caches
        cat /dev/null
        c2=$(cached_kib)
        cat "$BLOB" >/dev/null
        c3=$(cached_kib)
        rec 8 "$mode" mount_before_kib "$i" "$c0"
        rec 8 "$mode" mount_after_kib "$i" "$c1"
        rec 8 "$mode" direct_before_kib "$i" "$c2"
        rec 8 "$mode" direct_after_kib "$i" "$c3"
        show 8 "$mode" "$i"
      done
    done
  fi

  unmount "${MNT_OF[pt]}"
  unmount "${MNT_OF[off]}"
  rm -rf "$VSTORE" "$WORK/rclone-cache"
fi

# ---------------------------------------------------------------- rows 4, 7, 9: first open
if want_row 4 || want_row 7 || { [ "$USE_RCLONE" = 1 ] && want_row 9; }; then
  say "rows 4, 7 (and 9): first open of a pending model vs curl -o of the same URL"
  cat "$WORK/origin/model.gguf" >/dev/null # the origin's side is warm for everyone
  FMNT=$WORK/mnt/first
  # One unrecorded round first: the first large writes after start-up are
  # much slower on a VM whose free memory was never touched.
  curl -sS --fail --cacert "$WORK/tls/ca.pem" -o "$WORK/curl.out" "$URL"
  rm -f "$WORK/curl.out"
  pending_store "$WORK/first-store"
  mfs_mount "$WORK/first-store" "$FMNT" pt
  cat "$FMNT/model.gguf" >/dev/null
  unmount "$FMNT"
  rm -rf "$WORK/first-store"
  sync
  for i in $(seq "$RUNS"); do
    sync
    workers=$(nginx_workers)
    rec 4 - nginx_ticks_before_curl "$i" "$(ticks_of $workers)"
    t0=$(now_ns)
    # The shell reports its waited-for children's CPU time (cutime, cstime
    # in clock ticks): curl's.
    ccpu=$(sh -c 'curl -sS --fail --cacert "$1" -o "$2" "$3" &&
      cut -d" " -f16,17 /proc/$$/stat' sh "$WORK/tls/ca.pem" "$WORK/curl.out" "$URL")
    c=$(ns_since "$t0")
    rec 4 - nginx_ticks_after_curl "$i" "$(ticks_of $workers)"
    read -r cu cs <<<"$ccpu"
    rm -f "$WORK/curl.out"
    sync
    t0=$(now_ns)
    curl -sS --fail --cacert "$WORK/tls/ca.pem" -o "$WORK/curl.out" "$URL"
    sync -d "$WORK/curl.out"
    cf=$(ns_since "$t0")
    rm -f "$WORK/curl.out"
    sync

    S=$WORK/first-store
    pending_store "$S"
    mfs_mount "$S" "$FMNT" pt
    pid=${MOUNT_PID[$FMNT]}
    rec 7 - base_kib "$i" "$(status_kib "$pid" VmRSS)"
    rec 4 - gets_before "$i" "$(gets_of /model.gguf)"
    rec 4 - nginx_ticks_before_modelfs "$i" "$(ticks_of $workers)"
    m=$(tcat "$FMNT/model.gguf")
    rec 4 - modelfs_cpu_ticks "$i" "$(ticks_of "$pid")"
    rec 4 - nginx_ticks_after_modelfs "$i" "$(ticks_of $workers)"
    rec 7 - hwm_kib "$i" "$(status_kib "$pid" VmHWM)"
    rec 4 - gets_after "$i" "$(gets_of /model.gguf)"
    flog=${MOUNT_LOG[$FMNT]}
    unmount "$FMNT"
    [ -f "$(blob_in "$S")" ] || die "the first open did not leave a verified blob"
    rm -rf "$S"
    sync
    rec 4 - curl_ns "$i" "$c"
    rec 4 - curl_fsync_ns "$i" "$cf"
    rec 4 - modelfs_ns "$i" "$m"
    rec 4 - curl_cutime_ticks "$i" "$cu"
    rec 4 - curl_cstime_ticks "$i" "$cs"
    # The daemon's own account of the fetch's phases.
    phases=$(grep -o 'fetched in .*' "$flog" | tail -1 || true)
    if [ "$USE_RCLONE" = 1 ] && want_row 9; then
      RF=$WORK/mnt/rclone-first
      rclone_mount "$RF" "$WORK/rclone-first-cache"
      r=$(tcat "$RF/model.gguf")
      unmount "$RF"
      rm -rf "$WORK/rclone-first-cache"
      sync
      rec 9 rclone first_ns "$i" "$r"
      rec 9 modelfs first_ns "$i" "$m"
    fi
    show 4 - "$i" ${phases:+"[$phases]"}
  done
fi

# ---------------------------------------------------------------- row 5: 32 concurrent first opens
if want_row 5; then
  say "row 5: $CONCURRENT concurrent first opens of one pending model vs one opener"
  OMNT=$WORK/mnt/openers
  for i in $(seq "$RUNS"); do
    S=$WORK/open-store
    pending_store "$S"
    mfs_mount "$S" "$OMNT" pt
    rec 5 - one_gets_before "$i" "$(gets_of /model.gguf)"
    one=$(python3 scripts/bench/openers.py 1 "$OMNT/model.gguf")
    unmount "$OMNT"
    sleep 0.5
    rec 5 - one_gets_after "$i" "$(gets_of /model.gguf)"
    rm -rf "$S"
    sync
    pending_store "$S"
    mfs_mount "$S" "$OMNT" pt
    rec 5 - gets_before "$i" "$(gets_of /model.gguf)"
    rec 5 - sent_before "$i" "$(sent_of /model.gguf)"
    lat=$(python3 scripts/bench/openers.py "$CONCURRENT" "$OMNT/model.gguf")
    unmount "$OMNT"
    sleep 0.5 # nginx logs a request when it ends
    rec 5 - gets_after "$i" "$(gets_of /model.gguf)"
    rec 5 - sent_after "$i" "$(sent_of /model.gguf)"
    rm -rf "$S"
    sync
    n=$(wc -l <<<"$lat")
    [ "$n" = "$CONCURRENT" ] || die "only $n of $CONCURRENT openers reported"
    rec 5 - single_s "$i" "$one"
    k=0
    while read -r t; do
      k=$((k + 1))
      rec 5 - opener_s "$i.$k" "$t"
    done <<<"$lat"
    show 5 - "$i"
  done
fi

# ---------------------------------------------------------------- row 6: 10,000 manifests
if want_row 6; then
  say "row 6: ls -l and stat with $MANIFESTS manifests, idle and during a download"
  S=$WORK/many-store
  python3 scripts/bench/gen_manifests.py "$S" "$MANIFESTS" "https://127.0.0.1:$PORT"
  "$BIN" add slow --url "$SLOW_URL" --sha256 "$SHA" --size "$SIZE_BYTES" --no-facts \
    --store "$S" --ca-file "$WORK/tls/ca.pem" -q >/dev/null
  MMNT=$WORK/mnt/many
  mfs_mount "$S" "$MMNT" pt
  entries=("$MMNT"/*)
  [ "${#entries[@]}" = $((MANIFESTS + 1)) ] || die "the mount shows ${#entries[@]} entries, expected $((MANIFESTS + 1))"
  ls -l "$MMNT" >/dev/null
  # The kernel caches names and attributes for 1 s (TTL): wait it out before
  # each measurement, so that every run asks modelfs.
  measure6() {
    local phase=$1 i t0 l s
    for i in $(seq "$RUNS"); do
      sleep 1.1
      t0=$(now_ns)
      ls -l "$MMNT" >/dev/null
      l=$(ns_since "$t0")
      sleep 1.1
      t0=$(now_ns)
      stat -- "${entries[@]}" >/dev/null
      s=$(ns_since "$t0")
      rec 6 - "ls_${phase}_ns" "$i" "$l"
      rec 6 - "stat_${phase}_ns" "$i" "$s"
      show 6 "$phase" "$i"
    done
  }
  measure6 idle
  cat "$MMNT/slow.gguf" >/dev/null 2>&1 &
  CAT_PID=$!
  BG_PIDS+=("$CAT_PID")
  for _ in $(seq 50); do
    [ "$(getfattr --only-values -n user.modelfs.state "$MMNT/slow.gguf" 2>/dev/null)" = fetching ] && break
    sleep 0.1
  done
  sleep 1
  before=$(getfattr --only-values -n user.modelfs.progress "$MMNT/slow.gguf" 2>/dev/null || echo "? ?")
  measure6 busy
  after=$(getfattr --only-values -n user.modelfs.progress "$MMNT/slow.gguf" 2>/dev/null || echo "? ?")
  state=$(getfattr --only-values -n user.modelfs.state "$MMNT/slow.gguf" 2>/dev/null || echo unknown)
  info "download during the busy runs: bytes ${before%% *} -> ${after%% *} of ${after##* }, state now: $state"
  meta row6_download "bytes ${before%% *} -> ${after%% *} of ${after##* } at ${SLOW_KIB} KiB/s; state after: $state"
  [ "$state" = fetching ] || echo "   warning: the download was not running through all busy runs"
  kill -9 "$CAT_PID" 2>/dev/null || true
  wait "$CAT_PID" 2>/dev/null || true
  BG_PIDS=()
  unmount "$MMNT"
  rm -rf "$S"
fi

# ---------------------------------------------------------------- row 10: 100,000 manifests
if want_row 10; then
  say "row 10: $BIG_MANIFESTS manifests: resident memory, idle CPU, ls -l"
  S=$WORK/big-store
  python3 scripts/bench/gen_manifests.py "$S" "$BIG_MANIFESTS" "https://127.0.0.1:$PORT"
  # Manifests written in the last 2 s are parsed again until they settle.
  sleep 3
  BMNT=$WORK/mnt/big
  mfs_mount "$S" "$BMNT" pt
  pid=${MOUNT_PID[$BMNT]}
  # The watcher gives freed memory back when it starts and every 10 s.
  sleep 11
  rec 10 - rss_kib 1 "$(status_kib "$pid" VmRSS)"
  meta row10_idle_window_s 20
  rec 10 - idle_ticks_before 1 "$(ticks_of "$pid")"
  sleep 20
  rec 10 - idle_ticks_after 1 "$(ticks_of "$pid")"
  show 10 idle 1
  # As in row 6: the kernel has seen every entry once before the runs.
  ls -l "$BMNT" >/dev/null
  # The same listing on tmpfs, where no daemon answers: what the kernel
  # and ls alone cost at each size (the reference of the ratio's floor).
  T=$WORK/tmpfs
  mkdir -p "$T"
  mount -t tmpfs -o size=256m modelfs-bench "$T"
  MOUNTS+=("$T")
  mkdir "$T/small" "$T/big"
  (cd "$T/small" && seq -f 'bench-%05g.gguf' 0 "$MANIFESTS" | xargs touch)
  (cd "$T/big" && seq -f 'bench-%05g.gguf' 0 $((BIG_MANIFESTS - 1)) | xargs touch)
  for i in $(seq "$RUNS"); do
    sleep 1.1
    t0=$(now_ns)
    ls -l "$BMNT" >/dev/null
    rec 10 - ls_ns "$i" "$(ns_since "$t0")"
    t0=$(now_ns)
    ls -l "$T/small" >/dev/null
    rec 10 - tmpfs_small_ls_ns "$i" "$(ns_since "$t0")"
    t0=$(now_ns)
    ls -l "$T/big" >/dev/null
    rec 10 - tmpfs_big_ls_ns "$i" "$(ns_since "$t0")"
    show 10 - "$i"
  done
  umount "$T"
  forget_mount "$T"
  unmount "$BMNT"
  rm -rf "$S"
fi

# ---------------------------------------------------------------- rows 11, 12: first open vs downloaders
# first_vs_downloaders ROW URL LOG [curl]: RUNS times, each back to back:
# the first open through a fresh store and mount (cold), then (with curl)
# `curl -o`, `aria2c -x16` downloading alone, and aria2c with
# --checksum=sha-256 (download + verify). LOG is the origin's access log,
# read before and after each download for its GETs and body bytes sent.
first_vs_downloaders() {
  local row=$1 url=$2 log=$3 with_curl=${4:-} uri i S m c a v mnt=$WORK/mnt/first-$1
  uri=/${url#https://*/}
  S=$WORK/first-store-$row
  for i in $(seq "$RUNS"); do
    sync
    pending_store "$S" "$url"
    mfs_mount "$S" "$mnt" pt
    rec "$row" - mount_gets_before "$i" "$(gets_of "$uri" "$log")"
    rec "$row" - mount_sent_before "$i" "$(sent_of "$uri" "$log")"
    m=$(tcat "$mnt/model.gguf")
    rec "$row" - mount_hwm_kib "$i" "$(status_kib "${MOUNT_PID[$mnt]}" VmHWM)"
    unmount "$mnt"
    [ -f "$(blob_in "$S")" ] || die "row $row: the first open did not leave a verified blob"
    rm -rf "$S"
    # nginx logs a request when it ends; the daemon's connections closed with it.
    sleep 0.5
    rec "$row" - mount_gets_after "$i" "$(gets_of "$uri" "$log")"
    rec "$row" - mount_sent_after "$i" "$(sent_of "$uri" "$log")"
    rec "$row" - modelfs_ns "$i" "$m"
    sync
    if [ -n "$with_curl" ]; then
      t0=$(now_ns)
      "${NETNS_EXEC[@]}" curl -sS --fail --cacert "$WORK/tls/ca.pem" -o "$WORK/dl.out" "$url"
      c=$(ns_since "$t0")
      rm -f "$WORK/dl.out"
      sync
      rec "$row" - curl_ns "$i" "$c"
    fi
    rec "$row" - aria2_sent_before "$i" "$(sent_of "$uri" "$log")"
    t0=$(now_ns)
    aria2 "$url" "$WORK/dl.out" "$WORK/logs/aria2-$row.log"
    a=$(ns_since "$t0")
    sleep 0.5
    rec "$row" - aria2_sent_after "$i" "$(sent_of "$uri" "$log")"
    rm -f "$WORK/dl.out"
    sync
    t0=$(now_ns)
    aria2 "$url" "$WORK/dl.out" "$WORK/logs/aria2-$row.log" --checksum="sha-256=$SHA"
    v=$(ns_since "$t0")
    rm -f "$WORK/dl.out"
    sync
    rec "$row" - aria2_ns "$i" "$a"
    rec "$row" - aria2_checksum_ns "$i" "$v"
    show "$row" - "$i"
  done
}

if want_row 11; then
  say "row 11: origin capped at $CAP_MIB MiB/s per request: first open vs curl -o vs aria2c -x16"
  meta row11_cap_mib_per_request "$CAP_MIB"
  cat "$WORK/origin/model.gguf" >/dev/null # the origin's side is warm for everyone
  first_vs_downloaders 11 "$CAP_URL" "$WORK/nginx/access.log" curl
fi

# Row 12: the origin (its own nginx) in a network namespace the script makes,
# the clients (the mount daemon, aria2c) in a second one, on a private /30.
# The link is netem's `delay WAN_DELAY_MS loss WAN_LOSS_PCT%` on the
# origin's side; this kernel has no netem (CONFIG_NET_SCH_NETEM is not set),
# so scripts/bench/delay_line.py does it in user space between a TUN device
# in each namespace, as a real-time process (chrt -f 10; WAN_CHRT overrides):
# a real link has its own hardware, and a delay line that waits for a CPU
# slows whichever client works harder (the one that hashes) more than the
# link would. No traffic leaves these namespaces; the delay line is
# killed and both namespaces are deleted on exit (cleanup).
WAN_DELAY_MS=${WAN_DELAY_MS:-40}
WAN_LOSS_PCT=${WAN_LOSS_PCT:-0.1}
# Jumbo frames: at 1500 bytes the user-space delay line, not the link, was
# the limit (about 45-75 MiB/s with no delay and no loss on 2 cores).
WAN_MTU=${WAN_MTU:-9000}
wan_setup() {
  local o=mfsb$$o c=mfsb$$c conf=$WORK/nginx-wan/nginx.conf ready=$WORK/delay-line.ready i
  NS_O=modelfs-bench-$$-origin
  NS_C=modelfs-bench-$$-client
  ip netns add "$NS_O" && NETNS_MADE+=("$NS_O")
  ip netns add "$NS_C" && NETNS_MADE+=("$NS_C")
  ${WAN_CHRT:-chrt -f 10} python3 scripts/bench/delay_line.py "$NS_C" "$c" "$NS_O" "$o" "$WAN_DELAY_MS" "$WAN_LOSS_PCT" \
    "$ready" 2>"$WORK/logs/delay-line.log" &
  BG_PIDS+=("$!")
  for i in $(seq 50); do
    [ -s "$ready" ] && break
    [ "$i" = 50 ] && die "row 12: the delay line did not start (see $WORK/logs/delay-line.log)"
    sleep 0.1
  done
  ip -n "$NS_C" addr add "$WAN_NET.1/30" dev "$c"
  ip -n "$NS_O" addr add "$WAN_ORIGIN_IP/30" dev "$o"
  ip -n "$NS_C" link set "$c" mtu "$WAN_MTU" up
  ip -n "$NS_O" link set "$o" mtu "$WAN_MTU" up
  ip -n "$NS_C" link set lo up
  ip -n "$NS_O" link set lo up
  meta row12_link "${WAN_DELAY_MS} ms, ${WAN_LOSS_PCT}% loss"
  meta row12_method "origin -> client packets held ${WAN_DELAY_MS} ms and dropped with p = ${WAN_LOSS_PCT}% by delay_line.py between TUN devices (MTU $(ip -n "$NS_O" link show "$o" | sed -n "s/.* mtu \([0-9]*\).*/\1/p"))"
  mkdir -p "$WORK/nginx-wan/tmp"
  sed -e "s|$NGX/|$WORK/nginx-wan/|g" -e "s|listen 127.0.0.1:$PORT ssl;|listen $WAN_ORIGIN_IP:443 ssl;|" \
    "$NGINX_CONF" >"$conf"
  ip netns exec "$NS_O" nginx -p "$WORK/nginx-wan/" -c "$conf" -e "$WORK/nginx-wan/error.log" -t -q ||
    die "row 12: nginx refused $conf"
  ip netns exec "$NS_O" nginx -p "$WORK/nginx-wan/" -c "$conf" -e "$WORK/nginx-wan/error.log" ||
    die "row 12: nginx did not start (see $WORK/nginx-wan/error.log)"
  WAN_URL="https://$WAN_ORIGIN_IP/model.gguf"
  NETNS_EXEC=(nsenter "--net=/run/netns/$NS_C" --)
  for i in $(seq 50); do
    "${NETNS_EXEC[@]}" curl -sS --fail --cacert "$WORK/tls/ca.pem" -o /dev/null -r 0-0 "$WAN_URL" 2>/dev/null && break
    [ "$i" = 50 ] && die "row 12: nginx does not answer on $WAN_URL (see $WORK/nginx-wan/error.log)"
    sleep 0.1
  done
}

if want_row 12; then
  say "row 12: WAN-like link (${WAN_DELAY_MS} ms, ${WAN_LOSS_PCT}% loss, namespaces): first open vs aria2c -x16"
  wan_setup
  info "origin: $WAN_URL in namespace $NS_O, clients in $NS_C"
  first_vs_downloaders 12 "$WAN_URL" "$WORK/nginx-wan/access.log"
  NETNS_EXEC=()
fi

# ---------------------------------------------------------------- row 16: a fleet sharing one download
# Row 16: FLEET hosts (own store and mount each, on this machine) list one
# host's `modelfs serve` as their mirror and open the same pending model at
# once; host A's server fetches it from the capped origin once (pull-through)
# and serves them all. Then one host alone opens it from the origin. Records
# each host's open time and the bytes the origin sent.
FLEET=${FLEET:-4}
serve_start() {
  local store=$1 out=$WORK/serve.out i
  : >"$out"
  "$BIN" serve --store "$store" --ca-file "$WORK/tls/ca.pem" --listen 127.0.0.1:0 \
    --cert "$WORK/tls/cert.pem" --key "$WORK/tls/key.pem" >"$out" 2>>"$WORK/logs/serve.log" &
  SERVE_PID=$!
  BG_PIDS+=("$SERVE_PID")
  for i in $(seq 100); do
    [ -s "$out" ] && break
    [ "$i" = 100 ] && die "row 16: modelfs serve did not start (see $WORK/logs/serve.log)"
    sleep 0.1
  done
  SERVE_URL=$(head -n1 "$out")
}
fleet_row() {
  local uri=/${CAP_URL#https://*/} i j mirror pids t procs
  for i in $(seq "$RUNS"); do
    sync
    pending_store "$WORK/fleet-a" "$CAP_URL"
    serve_start "$WORK/fleet-a"
    for j in $(seq "$FLEET"); do
      pending_store "$WORK/fleet-$j" "$CAP_URL"
      MOUNT_OPTS="mirror=$SERVE_URL${MOUNT_OPTS:+,$MOUNT_OPTS}" mfs_mount "$WORK/fleet-$j" "$WORK/mnt/fleet-$j" pt
    done
    rec 16 - fleet_sent_before "$i" "$(sent_of "$uri")"
    # The CPU every process of the fleet used while it opened the model
    # (the server, the hosts' daemons, nginx): with two cores, the wall
    # time cannot be less than half of it.
    procs=("$SERVE_PID" $(nginx_workers))
    for j in $(seq "$FLEET"); do procs+=("${MOUNT_PID[$WORK/mnt/fleet-$j]}"); done
    rec 16 - fleet_ticks_before "$i" "$(ticks_of "${procs[@]}")"
    pids=()
    for j in $(seq "$FLEET"); do
      (tcat "$WORK/mnt/fleet-$j/model.gguf" >"$WORK/fleet-t-$j") &
      pids+=("$!")
    done
    for j in "${pids[@]}"; do wait "$j" || die "row 16: an open through the fleet's mirror failed"; done
    rec 16 - fleet_ticks_after "$i" "$(ticks_of "${procs[@]}")"
    for j in $(seq "$FLEET"); do
      rec 16 - host_ns "$i.$j" "$(cat "$WORK/fleet-t-$j")"
      unmount "$WORK/mnt/fleet-$j"
      rm -rf "$WORK/fleet-$j"
    done
    kill "$SERVE_PID" 2>/dev/null
    wait "$SERVE_PID" 2>/dev/null || true
    rm -rf "$WORK/fleet-a"
    sleep 0.5
    rec 16 - fleet_sent_after "$i" "$(sent_of "$uri")"
    sync
    pending_store "$WORK/fleet-lone" "$CAP_URL"
    mfs_mount "$WORK/fleet-lone" "$WORK/mnt/fleet-lone" pt
    t=$(tcat "$WORK/mnt/fleet-lone/model.gguf")
    unmount "$WORK/mnt/fleet-lone"
    rm -rf "$WORK/fleet-lone"
    rec 16 - lone_ns "$i" "$t"
    show 16 - "$i"
  done
}
if want_row 16; then
  say "row 16: $FLEET hosts open one pending model at once through one host's modelfs serve, vs one host alone"
  meta row16_hosts "$FLEET"
  fleet_row
fi

# ---------------------------------------------------------------- rows 13, 14: GGUF facts, split models (issue 14)
# Row 13: `modelfs add` of the remote model with its facts read from the
# header (Range requests): wall time of the add, and what nginx sent for it.
if want_row 13; then
  say "row 13: facts of a remote ${SIZE_MIB} MiB GGUF (modelfs add without --no-facts)"
  S=$WORK/facts-store
  for i in $(seq "$RUNS"); do
    rm -rf "$S"
    rec 13 - gets_before "$i" "$(gets_of /model.gguf)"
    rec 13 - sent_before "$i" "$(sent_of /model.gguf)"
    t0=$(now_ns)
    "$BIN" add model --url "$URL" --sha256 "$SHA" --size "$SIZE_BYTES" \
      --store "$S" --ca-file "$WORK/tls/ca.pem" -q >/dev/null
    t=$(ns_since "$t0")
    grep -q '"gguf"' "$S/manifests/model.json" || die "row 13: add recorded no facts"
    sleep 0.5 # nginx logs a request when it ends
    rec 13 - gets_after "$i" "$(gets_of /model.gguf)"
    rec 13 - sent_after "$i" "$(sent_of /model.gguf)"
    rec 13 - add_ns "$i" "$t"
    show 13 - "$i"
  done
  rm -rf "$S"
fi

# Row 14: a cold llama.cpp-style load (scripts/bench/split_load.py: shard
# 1's header, then every shard read in sequence) of a 4-shard model through
# the mount, against the single-file model of about the same size, both from
# the capped origin (row 11's /capped/), back to back in each run.
SPLIT_N=4
if want_row 14; then
  say "row 14: cold llama.cpp-style load, $SPLIT_N shards vs one file, origin capped at $CAP_MIB MiB/s per request"
  meta row14_shards "$SPLIT_N"
  mapfile -t SPLIT_SHAS < <(python3 scripts/bench/split_gguf.py "$WORK/origin" split "$SIZE_BYTES" "$SPLIT_N" | cut -d' ' -f2)
  [ "${#SPLIT_SHAS[@]}" = "$SPLIT_N" ] || die "row 14: split_gguf.py did not write $SPLIT_N shards"
  meta row14_set_bytes "$(cat "$WORK"/origin/split-*-of-*.gguf | wc -c)"
  cat "$WORK"/origin/split-*-of-*.gguf "$WORK/origin/model.gguf" >/dev/null # the origin's side warm
  S=$WORK/split-store
  mnt=$WORK/mnt/split
  for i in $(seq "$RUNS"); do
    sync
    pending_store "$S" "$CAP_URL"
    mfs_mount "$S" "$mnt" pt
    t0=$(now_ns)
    python3 scripts/bench/split_load.py "$mnt/model.gguf" >/dev/null || die "row 14: the single-file load failed"
    one=$(ns_since "$t0")
    unmount "$mnt"
    rm -rf "$S"
    sync
    args=()
    for sha in "${SPLIT_SHAS[@]}"; do args+=(--sha256 "$sha"); done
    "$BIN" add split --url "https://127.0.0.1:$PORT/capped/$(printf 'split-%05d-of-%05d.gguf' 1 "$SPLIT_N")" \
      "${args[@]}" --no-facts --store "$S" --ca-file "$WORK/tls/ca.pem" -q >/dev/null
    mfs_mount "$S" "$mnt" pt
    t0=$(now_ns)
    python3 scripts/bench/split_load.py "$mnt/$(printf 'split-%05d-of-%05d.gguf' 1 "$SPLIT_N")" >/dev/null ||
      die "row 14: the split load failed"
    set_ns=$(ns_since "$t0")
    unmount "$mnt"
    rm -rf "$S"
    rec 14 - single_ns "$i" "$one"
    rec 14 - split_ns "$i" "$set_ns"
    show 14 - "$i"
  done
fi

# Row 15: choosing what to evict among 10,000 blobs (the pure plan of
# store::evict over made-up records; goal < 100 ms), `modelfs du --bench-plan`.
if want_row 15; then
  say "row 15: choosing eviction victims among 10,000 blobs"
  for i in $(seq 1 "$RUNS"); do
    ns=$("$BIN" du --bench-plan 10000 | awk '{print $2}')
    rec 15 - plan_ms "$i" "$(python3 -c "print($ns / 1e6)")"
    info "run $i: $(python3 -c "print(f'{$ns / 1e6:.3f}')") ms"
  done
fi

# ---------------------------------------------------------------- report
T_END=$(date +%s)
meta duration_s "$((T_END - T_START))"
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta cpu_pressure_end "$(sed -n 1p /proc/pressure/cpu 2>/dev/null || echo n/a)"
say "results (${SIZE_MIB} MiB model, $RUNS runs each; median [min-max])"
python3 scripts/bench/report.py "$WORK" "$OUT_JSON"
echo
echo "raw samples and metadata: $OUT_JSON (took $((T_END - T_START)) s)"
