#!/usr/bin/env bash
# bench-registry.sh: issue 17's benchmark. The first open of a SIZE_MB (default
# 1024) model through a mount, fetched from Debian's docker-registry vs from
# nginx: the same file, TLS on loopback, the same binary BIN and mount options
# OPTS, ROUNDS rounds (default 3) alternating the two. Each round also times
# `curl -o /dev/null` of the same blob from each server and reads the CPU time
# the server spent on each transfer, so the table says how much of a
# difference is the server's own. Goal: first open from the registry <= 1.05 x
# from nginx. Works in D (default /tmp/oci-bench, kept for the next run: the
# test file and the CA); needs root only for nothing, and nginx,
# docker-registry, openssl, curl and bc.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/modelfs}
D=${D:-/tmp/oci-bench}
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-3}
for t in nginx /usr/bin/docker-registry openssl curl bc fusermount3; do
  command -v "$t" >/dev/null || { echo "bench-registry.sh: $t is missing (apt-get install nginx docker-registry openssl curl bc fuse3)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "bench-registry.sh: no modelfs at $BIN (cargo build --release)" >&2; exit 1; }
mkdir -p "$D"; cd "$D"
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > ext.cnf
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf 2>/dev/null
  cat leaf.pem ca.pem > chain.pem
fi
mkdir -p www
if [ ! -f www/m.gguf ] || [ "$(stat -c %s www/m.gguf)" != $((SIZE_MB << 20)) ]; then
  { printf GGUF; head -c $(((SIZE_MB << 20) - 4)) /dev/urandom; } > www/m.gguf
fi
HEX=$(sha256sum www/m.gguf | cut -d' ' -f1); N=$(stat -c %s www/m.gguf)
NP=18443; RP=18444
cat > nginx.conf <<NG
worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events {}
http { access_log off; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:$NP ssl; ssl_certificate $D/chain.pem; ssl_certificate_key $D/leaf.key; root $D/www; } }
NG
rm -rf regdata
cat > reg.yml <<RG
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $D/regdata}}
http: {addr: 127.0.0.1:$RP, tls: {certificate: $D/chain.pem, key: $D/leaf.key}}
RG
nginx -c "$D/nginx.conf" -p "$D" -g 'daemon off;' & NGPID=$!
/usr/bin/docker-registry serve reg.yml 2>reg.log & RGPID=$!
MOUNTS=()
cleanup() {
  for m in "${MOUNTS[@]}"; do fusermount3 -u "$m" 2>/dev/null || true; done
  kill $NGPID $RGPID 2>/dev/null || true
}
trap cleanup EXIT
C="curl -sS --fail --cacert ca.pem"
for _ in $(seq 50); do $C -o /dev/null "https://127.0.0.1:$RP/v2/" 2>/dev/null && $C -o /dev/null -r 0-0 "https://127.0.0.1:$NP/m.gguf" 2>/dev/null && break; sleep 0.1; done
upload() { # $1 = file: a monolithic blob upload (POST, then PUT with the digest)
  local loc
  loc=$($C -X POST -D - -o /dev/null "https://127.0.0.1:$RP/v2/bench/m/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case "$loc" in http*) ;; *) loc="https://127.0.0.1:$RP$loc";; esac
  $C -X PUT -H "Content-Type: application/octet-stream" -T "$1" "$loc&digest=sha256:$(sha256sum "$1" | cut -d' ' -f1)" -o /dev/null
}
upload www/m.gguf
printf '{}' > cfg.json; CH=$(sha256sum cfg.json | cut -d' ' -f1); upload cfg.json
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.model.config.v1+json","digest":"sha256:%s","size":2},"layers":[{"mediaType":"application/vnd.cncf.model.weight.v1.raw","digest":"sha256:%s","size":%s}]}' "$CH" "$HEX" "$N" > man.json
$C -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @man.json "https://127.0.0.1:$RP/v2/bench/m/manifests/v1" -o /dev/null
export REGISTRY_AUTH_FILE=$D/none.json
NGW=$(pgrep -P $NGPID | head -1)
cpu_of() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
server_of() { if [ "$1" = nginx ]; then echo "$NGW"; else echo "$RGPID"; fi; }
url_of() { if [ "$1" = nginx ]; then echo "https://127.0.0.1:$NP/m.gguf"; else echo "https://127.0.0.1:$RP/v2/bench/m/blobs/sha256:$HEX"; fi; }
first_open() { # $1 = nginx|registry: prints seconds and the server's CPU seconds
  local S=$D/store-$1 MP=$D/mnt-$1 pid c0 t0 t1
  rm -rf "$S"; mkdir -p "$S" "$MP"
  if [ "$1" = nginx ]; then
    "$BIN" --store "$S" --ca-file ca.pem add m --no-facts --url "$(url_of nginx)" --sha256 "$HEX" --size "$N" >/dev/null
  else
    "$BIN" --store "$S" --ca-file ca.pem add m --no-facts --oci "127.0.0.1:$RP/bench/m:v1" >/dev/null
  fi
  "$BIN" --store "$S" --ca-file ca.pem mount "$MP" -f ${OPTS:+-o $OPTS} 2>"$D/mount-$1.log" & pid=$!
  MOUNTS+=("$MP")
  for _ in $(seq 100); do [ -e "$MP/m.gguf" ] && break; sleep 0.1; done
  sync
  c0=$(cpu_of "$(server_of "$1")"); t0=$(date +%s.%N)
  head -c1 "$MP/m.gguf" >/dev/null
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(cpu_of "$(server_of "$1")") - $c0" | bc)"
  fusermount3 -u "$MP"; wait $pid || true
  rm -rf "$S"
}
curl_once() { # $1 = nginx|registry: prints seconds and the server's CPU seconds
  local c0 t0 t1
  c0=$(cpu_of "$(server_of "$1")"); t0=$(date +%s.%N)
  $C -o /dev/null "$(url_of "$1")"
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(cpu_of "$(server_of "$1")") - $c0" | bc)"
}
: > samples.txt
for i in $(seq "$ROUNDS"); do
  for k in nginx registry; do
    read -r t c < <(first_open $k); echo "$i first_open $k $t $c" | tee -a samples.txt
    read -r t c < <(curl_once $k); echo "$i curl $k $t $c" | tee -a samples.txt
  done
done
python3 - samples.txt "$SIZE_MB" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(what, k, col): return st.median(float(r[col]) for r in rows if r[1] == what and r[2] == k)
fo = {k: med("first_open", k, 3) for k in ("nginx", "registry")}
cu = {k: med("curl", k, 3) for k in ("nginx", "registry")}
sc = {k: med("curl", k, 4) for k in ("nginx", "registry")}
so = {k: med("first_open", k, 4) for k in ("nginx", "registry")}
print(f"\n{sys.argv[2]} MiB, {len(rows) // 4} rounds, medians:")
print(f"  first open through a mount: nginx {fo['nginx']:.2f} s, registry {fo['registry']:.2f} s: "
      f"registry / nginx = {fo['registry'] / fo['nginx']:.2f} (goal <= 1.05)")
print(f"  curl -o /dev/null:          nginx {cu['nginx']:.2f} s, registry {cu['registry']:.2f} s: "
      f"registry / nginx = {cu['registry'] / cu['nginx']:.2f} (the servers alone)")
print(f"  server CPU seconds, curl:       nginx {sc['nginx']:.2f}, registry {sc['registry']:.2f}")
print(f"  server CPU seconds, first open: nginx {so['nginx']:.2f}, registry {so['registry']:.2f}")
print(f"  first open / curl:          nginx {fo['nginx'] / cu['nginx']:.2f}, registry {fo['registry'] / cu['registry']:.2f}")
PY
