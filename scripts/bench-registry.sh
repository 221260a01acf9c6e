#!/usr/bin/env bash
# bench-registry.sh: the first open of a 1 GiB model (SIZE_MB) through a mount, fetched
# from docker-registry vs from nginx (same file, TLS on loopback, same binary BIN,
# mount options OPTS), three rounds each. Needs nginx, docker-registry, openssl, curl.
# Issue 17 goal: registry <= 1.05 x nginx. Works in /tmp/oci-bench (D).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/modelfs}
D=${D:-/tmp/oci-bench}; mkdir -p $D; cd $D
SIZE_MB=${SIZE_MB:-1024}
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > ext.cnf
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile ext.cnf 2>/dev/null
  cat leaf.pem ca.pem > chain.pem
fi
mkdir -p www
if [ ! -f www/m.gguf ]; then
  { printf GGUF; head -c $((SIZE_MB*1024*1024 - 4)) /dev/urandom; } > www/m.gguf
fi
HEX=$(sha256sum www/m.gguf | cut -d' ' -f1); N=$(stat -c %s www/m.gguf)
NP=18443; RP=18444
cat > nginx.conf <<NG
worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events {}
http { access_log off; sendfile on; tcp_nopush on;
  server { listen 127.0.0.1:$NP ssl; ssl_certificate $D/chain.pem; ssl_certificate_key $D/leaf.key; root $D/www; } }
NG
nginx -c $D/nginx.conf -p $D -g 'daemon off;' & NGPID=$!
cat > reg.yml <<RG
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $D/regdata}}
http: {addr: 127.0.0.1:$RP, tls: {certificate: $D/chain.pem, key: $D/leaf.key}}
RG
/usr/bin/docker-registry serve reg.yml 2>reg.log & RGPID=$!
trap 'kill $NGPID $RGPID 2>/dev/null || true' EXIT
sleep 1
C="curl -sS --cacert ca.pem"
LOC=$($C -X POST -D - -o /dev/null https://127.0.0.1:$RP/v2/bench/m/blobs/uploads/ | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
case "$LOC" in http*) ;; *) LOC="https://127.0.0.1:$RP$LOC";; esac
$C -X PUT -H "Content-Type: application/octet-stream" -T www/m.gguf "$LOC&digest=sha256:$HEX" -o /dev/null -w "%{http_code}\n"
echo -n '{}' > cfg.json; CH=$(sha256sum cfg.json | cut -d' ' -f1)
LOC=$($C -X POST -D - -o /dev/null https://127.0.0.1:$RP/v2/bench/m/blobs/uploads/ | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
case "$LOC" in http*) ;; *) LOC="https://127.0.0.1:$RP$LOC";; esac
$C -X PUT -H "Content-Type: application/octet-stream" -T cfg.json "$LOC&digest=sha256:$CH" -w "%{http_code}\n"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.model.config.v1+json","digest":"sha256:%s","size":2},"layers":[{"mediaType":"application/vnd.cncf.model.weight.v1.raw","digest":"sha256:%s","size":%s}]}' $CH $HEX $N > man.json
$C -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @man.json https://127.0.0.1:$RP/v2/bench/m/manifests/v1 -o /dev/null -w "%{http_code}\n"
export REGISTRY_AUTH_FILE=$D/none.json
first_open() { # $1 = kind
  local S=$D/store-$1 MP=$D/mnt-$1
  rm -rf $S; mkdir -p $S $MP
  if [ $1 = nginx ]; then
    $BIN --store $S --ca-file ca.pem add m --no-facts --url https://127.0.0.1:$NP/m.gguf --sha256 $HEX --size $N >/dev/null
  else
    $BIN --store $S --ca-file ca.pem add m --no-facts --oci 127.0.0.1:$RP/bench/m:v1 >/dev/null
  fi
  $BIN --store $S --ca-file ca.pem mount $MP -f ${OPTS:+-o $OPTS} 2>$D/mount-$1.log & local MPID=$!
  for _ in $(seq 100); do [ -e $MP/m.gguf ] && break; sleep 0.1; done
  local t0=$(date +%s.%N); head -c1 $MP/m.gguf >/dev/null; local t1=$(date +%s.%N)
  fusermount3 -u $MP; wait $MPID || true
  echo "$1 $(echo "$t1 - $t0" | bc)"
}
for i in 1 2 3; do first_open nginx; first_open registry; done
