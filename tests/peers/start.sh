#!/usr/bin/env bash
# Starts the real third-party peers of tests/real_peers.rs on loopback ports:
# panva's oidc-provider (tests/peers/idp) and Dovecot IMAP + submission
# (tests/peers/dovecot) with a tiny SMTP sink as its relay; and the key
# files of mailconnect's private_key_jwt client there. Installs them
# first if missing (Debian packages, npm ci). Prints one line,
#   MAILCONNECT_PEERS=<dir>/env
# the file of settings the tests read; all else goes to stderr.
# Stop with tests/peers/stop.sh <dir> (or MAILCONNECT_PEERS set).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "peers: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v dovecot >/dev/null || [ ! -e /usr/lib/dovecot/submission ]; then
  log "installing dovecot-imapd dovecot-submissiond"
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq dovecot-imapd dovecot-submissiond >&2
fi
if [ ! -d "$here/idp/node_modules/oidc-provider" ]; then
  log "npm ci in tests/peers/idp"
  (cd "$here/idp" && npm ci --no-audit --no-fund >&2)
fi

run=$(mktemp -d /tmp/mailconnect-peers.XXXXXX)
chmod 755 "$run"
mkdir -p "$run/run" "$run/state" "$run/mail"

free_ports() {
  node -e '
    const net = require("net"); const n = Number(process.argv[1]); const out = []; const hold = [];
    (function next() {
      if (out.length === n) { console.log(out.join(" ")); hold.forEach(s => s.close()); return; }
      const s = net.createServer(); s.listen(0, "127.0.0.1", () => { out.push(s.address().port); hold.push(s); next(); });
    })();' "$1"
}
read -r idp_port imap_port imaps_port submission_port sink_port <<<"$(free_ports 5)"

secret() { openssl rand -hex 24; }
client_secret=$(secret)
dovecot_secret=$(secret)
issuer="http://127.0.0.1:$idp_port"
redirect="http://127.0.0.1:8080/api/oauth/oidc/callback"
email="alice@mail.test"
access_ttl=${PEERS_ACCESS_TTL:-30}

# A private CA and a server certificate for 127.0.0.1 / localhost.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mailconnect peers test CA" \
  -keyout "$run/ca.key" -out "$run/ca.pem" >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$run/server.key" -out "$run/server.csr" >/dev/null 2>&1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$run/server.ext"
openssl x509 -req -in "$run/server.csr" -CA "$run/ca.pem" -CAkey "$run/ca.key" -CAcreateserial \
  -days 2 -extfile "$run/server.ext" -out "$run/server.pem" >/dev/null 2>&1

# mailconnect's private_key_jwt client keys, as an operator makes them: RSA
# (PKCS#8) and EC P-256 (SEC1, the curve's block first); the provider
# registers their public halves.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$run/client-rsa.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -out "$run/client-ec.pem" 2>/dev/null
for k in rsa ec; do openssl pkey -in "$run/client-$k.pem" -pubout -out "$run/client-$k.pub.pem" 2>/dev/null; done

if [ "$(id -u)" = 0 ]; then
  user=dovecot; group=dovecot; login_user=dovenull
  chown -R dovecot:dovecot "$run/mail"
  chmod 644 "$run/server.key"
else
  user=$(id -un); group=$(id -gn); login_user=$user
fi
fill() {
  sed -e "s#@RUN@#$run#g" -e "s#@USER@#$user#g" -e "s#@GROUP@#$group#g" \
      -e "s#@LOGIN_USER@#$login_user#g" -e "s#@IMAP_PORT@#$imap_port#g" \
      -e "s#@IMAPS_PORT@#$imaps_port#g" -e "s#@SUBMISSION_PORT@#$submission_port#g" \
      -e "s#@SINK_PORT@#$sink_port#g" -e "s#@IDP_PORT@#$idp_port#g" \
      -e "s#@DOVECOT_SECRET@#$dovecot_secret#g" "$1"
}
fill "$here/dovecot/dovecot.conf" >"$run/dovecot.conf"
fill "$here/dovecot/dovecot-oauth2.conf.ext" >"$run/dovecot-oauth2.conf.ext"
chmod 644 "$run/dovecot-oauth2.conf.ext"

node "$here/sink.mjs" "$sink_port" >"$run/sink.log" 2>&1 &
echo $! >"$run/sink.pid"
IDP_PORT=$idp_port IDP_ISSUER=$issuer IDP_CLIENT_ID=mailconnect IDP_CLIENT_SECRET=$client_secret \
IDP_REDIRECT_URI=$redirect IDP_DOVECOT_SECRET=$dovecot_secret IDP_USER_EMAIL=$email \
IDP_ACCESS_TTL=$access_ttl IDP_KEY_CLIENT_ID=mailconnect-key \
IDP_KEY_CLIENT_PUBLIC_KEYS="$run/client-rsa.pub.pem,$run/client-ec.pub.pem" node "$here/idp/server.mjs" >"$run/idp.log" 2>&1 &
echo $! >"$run/idp.pid"
dovecot -c "$run/dovecot.conf"

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "port $1 did not open; see $run/*.log"; return 1
}
for p in "$idp_port" "$imaps_port" "$submission_port" "$sink_port"; do wait_port "$p"; done

cat >"$run/env" <<ENV
PEERS_DIR=$run
PEERS_IDP_ISSUER=$issuer
PEERS_IDP_CLIENT_ID=mailconnect
PEERS_IDP_CLIENT_SECRET=$client_secret
PEERS_IDP_REDIRECT_URI=$redirect
PEERS_IDP_KEY_CLIENT_ID=mailconnect-key
PEERS_IDP_CLIENT_KEY_RSA=$run/client-rsa.pem
PEERS_IDP_CLIENT_KEY_EC=$run/client-ec.pem
PEERS_DOVECOT_CLIENT_ID=dovecot
PEERS_DOVECOT_CLIENT_SECRET=$dovecot_secret
PEERS_USER_EMAIL=$email
PEERS_ACCESS_TTL=$access_ttl
PEERS_IMAP_HOST=127.0.0.1:$imap_port
PEERS_IMAPS_HOST=127.0.0.1:$imaps_port
PEERS_SUBMISSION_HOST=127.0.0.1:$submission_port
PEERS_CA_FILE=$run/ca.pem
ENV
log "oidc-provider $issuer, Dovecot imaps 127.0.0.1:$imaps_port, imap (STARTTLS) 127.0.0.1:$imap_port, submission 127.0.0.1:$submission_port; logs in $run"
echo "MAILCONNECT_PEERS=$run/env"
