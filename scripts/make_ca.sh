#!/usr/bin/env bash
# make_ca.sh DIR [IP...]: a throwaway CA (DIR/ca.pem) and a server
# certificate for 127.0.0.1, localhost and each extra IP signed by it
# (DIR/cert.pem, DIR/key.pem).
set -euo pipefail
dir=$1
shift
san=IP:127.0.0.1,DNS:localhost
for ip in "$@"; do san+=",IP:$ip"; done
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj "/CN=modelfs throwaway CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" > leaf.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile leaf.ext 2>/dev/null
rm -f leaf.csr leaf.ext ca.srl
