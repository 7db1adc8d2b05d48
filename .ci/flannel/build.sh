#!/usr/bin/env bash
# Builds the real flannel that upstream labs run, at pinned versions, when
# the right version is not installed yet:
#   flanneld  v0.28.9  (github.com/flannel-io/flannel)   -> $FLANNEL_BIN/flanneld
#   flannel   CNI plugin v0.9.1 (the last release of containernetworking/plugins
#             that holds plugins/meta/flannel; flannel-io/cni-plugin is not
#             served by the Go module proxy)        -> $CNI_BIN/flannel
# flanneld is built through this folder's module, which only replaces
# Tencent Cloud's VPC SDK (not served by the proxy) with a stub that fails:
# see vpcstub/. Needs Go and gcc (the UDP backend uses cgo).
set -euo pipefail
cd "$(dirname "$0")"
FLANNELD_VERSION=v0.28.9
PLUGIN_VERSION=v0.9.1
FLANNEL_BIN=${FLANNEL_BIN:-/usr/local/bin}
CNI_BIN=${CNI_BIN:-/opt/cni/bin}
export GOFLAGS="-mod=mod -buildvcs=false"

have_flanneld() {
  [ -x "$FLANNEL_BIN/flanneld" ] && [ "$("$FLANNEL_BIN/flanneld" --version 2>&1 | head -1)" = "$FLANNELD_VERSION" ]
}
have_plugin() {
  [ -x "$CNI_BIN/flannel" ] && CNI_COMMAND= "$CNI_BIN/flannel" 2>&1 | grep -q "flannel plugin $PLUGIN_VERSION"
}

if have_flanneld; then
  echo "flanneld $FLANNELD_VERSION already in $FLANNEL_BIN" >&2
else
  echo "building flanneld $FLANNELD_VERSION (about 2-3 minutes on 2 cores)" >&2
  mkdir -p "$FLANNEL_BIN"
  CGO_ENABLED=1 go build -trimpath -o "$FLANNEL_BIN/flanneld.new" \
    -ldflags "-s -w -X github.com/flannel-io/flannel/pkg/version.Version=$FLANNELD_VERSION" \
    github.com/flannel-io/flannel
  mv "$FLANNEL_BIN/flanneld.new" "$FLANNEL_BIN/flanneld"
  have_flanneld || { echo "built flanneld does not report $FLANNELD_VERSION" >&2; exit 1; }
fi

if have_plugin; then
  echo "flannel CNI plugin $PLUGIN_VERSION already in $CNI_BIN" >&2
else
  echo "building the flannel CNI plugin $PLUGIN_VERSION" >&2
  mkdir -p "$CNI_BIN"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  GOFLAGS= GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$PLUGIN_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/flannel@$PLUGIN_VERSION"
  mv "$tmp/flannel" "$CNI_BIN/flannel"
  have_plugin || { echo "built flannel plugin does not report $PLUGIN_VERSION" >&2; exit 1; }
fi
