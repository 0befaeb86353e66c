#!/usr/bin/env bash
# Builds hive-matrix the way it ships and checks that the result runs:
#   1. copies exactly the paths in nix/package-files.txt (what nix/package.nix builds from) to an
#      empty directory, runs `npm ci` and `npm run build` there, and runs the built CLI
#      (`--help`, `check-config` on the sample config);
#   2. packs that build with `npm pack`, installs the tarball into an empty npm project and runs
#      `hive-matrix --help`, `registration` and `run` until its /live endpoint answers.
# Needs the npm registry (as `npm ci` does). Prints one line per step; exits non-zero on failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
service_pid=""
cleanup() {
  if [[ -n "$service_pid" ]]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { echo "package-check: $*"; }

src="$work/src"
mkdir -p "$src"
while IFS= read -r path; do
  [[ -z "$path" || "$path" == \#* ]] && continue
  [[ -e "$repo/$path" ]] || { echo "package-check: nix/package-files.txt lists $path, which does not exist" >&2; exit 1; }
  mkdir -p "$src/$(dirname "$path")"
  cp -a "$repo/$path" "$src/$path"
done <"$repo/nix/package-files.txt"
rm -rf "$src/dist"
step "building from the file set of nix/package-files.txt in $src"
(cd "$src" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run --silent build)
node "$src/bin/hive-matrix.js" --help >/dev/null
node "$src/bin/hive-matrix.js" check-config --config "$src/config.sample.yaml" >/dev/null
step "file-set build OK (built CLI answers --help and check-config)"

(cd "$src" && npm pack --silent --pack-destination "$work" >/dev/null)
tarball="$(ls "$work"/hive-matrix-*.tgz)"
consumer="$work/consumer"
mkdir -p "$consumer"
cd "$consumer"
npm init -y >/dev/null
# No install script is needed: hive-matrix loads its own crypto stub (src/crypto-stub.ts).
npm install --no-audit --no-fund --ignore-scripts --loglevel=error "$tarball" >/dev/null
"$consumer/node_modules/.bin/hive-matrix" --help >/dev/null
port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
cat >config.yaml <<YAML
homeserver: { url: "http://127.0.0.1:9", domain: hive.example }
appservice: { port: $port, url: "http://127.0.0.1:$port", registration: "$consumer/registration.yaml" }
stateDir: "$consumer/state"
agents: { stateRoot: "$consumer/agents" }
YAML
"$consumer/node_modules/.bin/hive-matrix" registration --config config.yaml >/dev/null
"$consumer/node_modules/.bin/hive-matrix" run --config config.yaml >"$work/run.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/live" >/dev/null 2>&1; then
    step "npm pack tarball installs into an empty project; hive-matrix --help, registration and run work"
    exit 0
  fi
  kill -0 "$service_pid" 2>/dev/null || break
  sleep 0.2
done
echo "package-check: the installed tarball's 'hive-matrix run' did not answer /live; its output:" >&2
cat "$work/run.log" >&2
exit 1
