#!/usr/bin/env bash
# A private test CA and the certificates of PROTOCOL §1's parties, for the broker of
# examples/mosquitto/ (tests, demos, a lab). Not for production: there the keys are made on each
# machine and only certificate requests travel (docs/security.md).
#
#   scripts/make-test-ca.sh DIR [SITE_ID] [BROKER_HOST]
#
# DIR/ca.crt ca.key                     the CA (reused when DIR already has one: run again to re-issue)
# DIR/broker.crt broker.key             mosquitto's server certificate: localhost, 127.0.0.1, BROKER_HOST
# DIR/gateway-SITE_ID.crt .key          the site's gateway (CN gateway-SITE_ID; SITE_ID default site-001)
# DIR/ldc.crt ldc.key                   the LDC (CN ldc)
# DIR/ieso.crt ieso.key                 the market side (CN ieso)
# DIR/rogue-ca.crt rogue.crt rogue.key  CN ldc, but signed by another CA: the broker must refuse it
#
# Every key is created with mode 600 (the gateway refuses a key that others can read).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
dir=$1
site=${2:-site-001}
broker_host=${3:-}
days=${DAYS:-365}
mkdir -p "$dir"
cd "$dir"
umask 077 # keys (and the CA's serial files) readable by their owner only, from the first byte

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# $1 name, $2 CN, $3 extensions, $4 CA name (ca or rogue-ca)
issue() {
    local name=$1 cn=$2 ext=$3 ca=${4:-ca}
    key "$name.key"
    openssl req -new -key "$name.key" -subj "/O=der-gateway test/CN=$cn" -out "$name.csr"
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -days "$days" \
        -sha256 -extfile <(printf '%s\n' "$ext") -out "$name.crt" 2>/dev/null
    rm -f "$name.csr"
    chmod 644 "$name.crt"
    chmod 600 "$name.key"
}

make_ca() {
    local name=$1 cn=$2
    key "$name.key"
    openssl req -new -x509 -key "$name.key" -subj "/O=der-gateway test/CN=$cn" -days "$days" -sha256 \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$name.crt"
    chmod 644 "$name.crt"
}

client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
server="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1${broker_host:+,DNS:$broker_host}"

[ -f ca.key ] && [ -f ca.crt ] || make_ca ca "der-gateway test CA"
issue broker broker "$server"
issue "gateway-$site" "gateway-$site" "$client"
issue ldc ldc "$client"
issue ieso ieso "$client"
[ -f rogue-ca.key ] && [ -f rogue-ca.crt ] || make_ca rogue-ca "rogue CA"
issue rogue ldc "$client" rogue-ca
echo "wrote $(pwd): ca, broker, gateway-$site, ldc, ieso, rogue (CN ldc from rogue-ca)"
