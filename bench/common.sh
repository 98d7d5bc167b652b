# Shell helpers shared by the benchmark scripts (sourced; needs python3,
# curl, and JWT_SECRET set before `mint` is called, `log` and `die` defined).

mint() { # mint ROLE -> HS256 JWT for tenant bench-tenant, valid 1 h
    JWT_SECRET="$JWT_SECRET" python3 - "$1" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
enc = lambda o: b64(json.dumps(o, separators=(",", ":")).encode())
head = enc({"alg": "HS256", "typ": "JWT"})
body = enc({"sub": "bench-" + sys.argv[1], "tenant_id": "bench-tenant",
            "role": sys.argv[1], "exp": int(time.time()) + 3600})
sig = hmac.new(os.environ["JWT_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
}
wait_http() { # wait_http URL NAME PID: up to 20 s for a 200
    for _ in $(seq 200); do
        kill -0 "$3" 2>/dev/null || die "$2 exited during start-up (see above)"
        curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 did not answer $1 within 20 s"
}

write_section() { # write_section REPORT NEW BEGIN END: NEW's text between the markers
    local report="$1" new="$2" begin="$3" end="$4"
    if [[ -f "$report" ]] && grep -qF "$begin" "$report" && grep -qF "$end" "$report"; then
        python3 - "$report" "$new" "$begin" "$end" <<'PY'
import sys
path, new, begin, end = sys.argv[1:]
text = open(path).read()
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(head + begin + "\n" + open(new).read() + end + tail)
PY
        log "wrote the results into $report"
    else
        log "$report has no markers $begin: not written"
    fi
}
