#!/usr/bin/env bash
# Builds real Kubernetes v1.20.2 binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl, kube-proxy) offline, from Debian bookworm's `kubernetes`
# *source* package, and caches them OUTSIDE the repository.
#
#   scripts/kube-build.sh              build if needed, print the bin dir (the only stdout line)
#   scripts/kube-build.sh --print-dir  same (the spelling callers should use)
#   scripts/kube-build.sh --rebuild    build again even if the cache is complete
#
# Environment:
#   WEFT_KUBE_ASSETS     a dir that already holds all six binaries: printed as is, nothing built
#                        (the pattern of envtest's KUBEBUILDER_ASSETS).
#   WEFT_KUBE_CACHE      cache root (default /var/cache/weft/kubernetes). Layout:
#                          src/                  the .dsc/.orig.tar.gz/.debian.tar.xz (kept, so a
#                                                rebuild needs no download)
#                          work/                 extracted tree + Go caches (removed on success)
#                          v1.20.2/bin/<binary>  the result, plus bin/.stamp
#   WEFT_KUBE_KEEP_WORK  1 = keep work/ after a successful build (for debugging the mends).
#
# Why not a package: no registry we reach ships kube-apiserver/kubelet binaries, but Debian's
# source package is the full upstream v1.20.2 tree with vendor/, plus Debian's three kubectl
# printing patches (one is the CVE-2021-25743 fix). Upstream built v1.20 with Go 1.15 in GOPATH
# mode; Debian bookworm has Go 1.19, so three mends are needed (see /work/shared/FIELD-NOTES.md,
# "A real Kubernetes on this machine"); each is explained where it is applied below.
# A full build takes 5-10 minutes on 2 cores and ~4 GB of disk at its peak (~430 MB once done);
# a run with the cache complete takes milliseconds.
# Needs root only when it must install Debian packages or add the deb-src entry.
set -euo pipefail

KUBE_VERSION=v1.20.2
# The upstream version inside Debian's "1.20.5+really1.20.2" source package.
DEB_ORIG=kubernetes_1.20.5+really1.20.2.orig.tar.gz
# Bump when the recipe changes, so existing caches are rebuilt instead of trusted.
RECIPE_REV=1
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)

CACHE=${WEFT_KUBE_CACHE:-/var/cache/weft/kubernetes}
VERSION_DIR=$CACHE/$KUBE_VERSION
BIN_DIR=$VERSION_DIR/bin
STAMP=$BIN_DIR/.stamp
SRC_DIR=$CACHE/src
WORK=$CACHE/work
STAMP_WANT="weft-kube-build $KUBE_VERSION recipe=$RECIPE_REV"

log() { printf 'kube-build: %s\n' "$*" >&2; }
die() { printf 'kube-build: error: %s\n' "$*" >&2; exit 1; }

have_all() { # have_all DIR: DIR holds every binary, executable
  local b
  for b in "${BINARIES[@]}"; do [[ -x $1/$b ]] || return 1; done
}

cache_complete() {
  local line=""
  have_all "$BIN_DIR" && [[ -f $STAMP ]] && read -r line <"$STAMP" && [[ $line == "$STAMP_WANT" ]]
}

rebuild=0
case "${1:-}" in
  ''|--print-dir) ;;
  --rebuild) rebuild=1 ;;
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

# --- Fast paths: no locks, no subprocesses ------------------------------------------------
if [[ -n ${WEFT_KUBE_ASSETS:-} ]]; then
  # An explicit asset dir is never silently replaced by a build: a half-filled one is an error.
  have_all "$WEFT_KUBE_ASSETS" || die "WEFT_KUBE_ASSETS=$WEFT_KUBE_ASSETS lacks one of: ${BINARIES[*]}"
  printf '%s\n' "$WEFT_KUBE_ASSETS"
  exit 0
fi
if [[ $rebuild == 0 ]] && cache_complete; then
  printf '%s\n' "$BIN_DIR"
  exit 0
fi

# --- Serialize builds: several sessions may ask for the binaries at once ------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "another kube-build holds $CACHE/.lock; waiting"
  flock 9
fi
if [[ $rebuild == 0 ]] && cache_complete; then # built by whoever held the lock
  printf '%s\n' "$BIN_DIR"
  exit 0
fi

START=$SECONDS
TMP_BIN=""
cleanup() {
  local rc=$?
  [[ -n $TMP_BIN ]] && rm -rf "$TMP_BIN"
  if [[ $rc != 0 ]]; then
    log "FAILED (exit $rc) after $((SECONDS - START))s; the work tree is kept in $WORK for inspection"
  fi
}
trap cleanup EXIT

# --- Debian packages ------------------------------------------------------------------------
# golang-go:  Go 1.19, the only Go in bookworm.
# golang-github-modern-go-reflect2-dev: reflect2 v1.0.2 source, for mend 1.
# dpkg-dev:   dpkg-source, to extract the source package (apt-get source needs it too).
# --no-install-recommends keeps gcc/g++/pkg-config (recommended by golang-1.19-go) off a fresh
# machine: CGO_ENABLED=0 never calls them, and nothing below relies on a recommended package.
# Everything else used here (tar, gzip, xz-utils, patch via dpkg-dev; mawk, sed, grep, find,
# diff, flock) is essential/required in bookworm or a dependency of the above.
PACKAGES=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev)
GO=/usr/lib/go-1.19/bin/go # pin the toolchain this recipe was checked with, whatever PATH says

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

have_deb_src() {
  # shellcheck disable=SC2016 # $(FIELD) is apt's own template syntax, not the shell's
  apt-get indextargets --format '$(IDENTIFIER) $(RELEASE) $(COMPONENT)' 2>/dev/null \
    | grep -qx 'Sources bookworm main'
}
have_src_files() { compgen -G "$SRC_DIR/kubernetes_*.dsc" >/dev/null && [[ -f $SRC_DIR/$DEB_ORIG ]]; }

need_update=0
if ! have_src_files && ! have_deb_src; then
  # `apt-get source` needs a deb-src entry for bookworm main. Same mirror and keyring as the
  # machine's own debian.sources (deb822), so it is verified like every other download.
  [[ $(id -u) == 0 ]] || die "need root to add a deb-src entry (or put the source files in $SRC_DIR)"
  uri=http://deb.debian.org/debian
  signed_by=/usr/share/keyrings/debian-archive-keyring.gpg
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    u=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    s=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    [[ -n $u ]] && uri=$u
    [[ -n $s && -f $s ]] && signed_by=$s
  fi
  log "adding deb-src entry /etc/apt/sources.list.d/weft-deb-src.sources ($uri bookworm main)"
  cat >/etc/apt/sources.list.d/weft-deb-src.sources <<EOF
# Added by weft's scripts/kube-build.sh: Debian source packages (kubernetes), to build test
# binaries of a real Kubernetes offline.
Types: deb-src
URIs: $uri
Suites: bookworm
Components: main
Signed-By: $signed_by
EOF
  need_update=1
fi
if ! have_src_files && ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
  need_update=1 # entry present but its index was never fetched
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  need_update=1
fi
if [[ $need_update == 1 ]]; then
  [[ $(id -u) == 0 ]] || die "need root for apt-get (missing: ${missing[*]:-source index})"
  log "apt-get update"
  apt-get update -qq >&2
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
[[ -x $GO ]] || die "$GO missing (golang-1.19-go)"
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -f $REFLECT2_SRC/go_above_118.go ]] || die "$REFLECT2_SRC is not reflect2 >= v1.0.2"

# --- Source: download once, keep ----------------------------------------------------------------
mkdir -p "$SRC_DIR"
if ! have_src_files; then
  log "downloading Debian source package kubernetes into $SRC_DIR"
  # apt verifies the files against the signed Sources index. (It warns that it downloads as
  # root rather than _apt because _apt cannot write to $SRC_DIR; harmless.)
  (cd "$SRC_DIR" && apt-get source --download-only kubernetes >&2)
  have_src_files || die "apt-get source did not produce $DEB_ORIG (Debian's package changed?)"
fi
DSC=$(compgen -G "$SRC_DIR/kubernetes_*.dsc" | sort | tail -n1)

# --- Extract --------------------------------------------------------------------------------------
if [[ -e $WORK ]]; then
  chmod -R u+w "$WORK" 2>/dev/null || true
  rm -rf "$WORK"
fi
mkdir -p "$WORK"
TREE=$WORK/tree
log "extracting $(basename "$DSC") (checksums from the .dsc; Debian's patches applied)"
# dpkg-source checks every file against the .dsc's checksums; gpgv's "Can't check signature: No
# public key" about the .dsc itself is expected without debian-keyring, and harmless: apt already
# verified the .dsc against the signed Sources index when it downloaded it.
dpkg-source -q -x "$DSC" "$TREE" >&2
[[ -d $TREE/vendor && -f $TREE/vendor/modules.txt ]] || die "no vendor/ in $TREE"
grep -q '^module k8s.io/kubernetes$' "$TREE/go.mod" || die "$TREE/go.mod is not k8s.io/kubernetes"
grep -q "tag: $KUBE_VERSION'" "$TREE/hack/lib/version.sh" || die "$TREE is not $KUBE_VERSION"
cd "$TREE"

# Go environment for everything below. GOENV=off: a user's `go env -w` settings (GOFLAGS,
# GOPROXY...) must not leak in. GOPROXY=off + -mod=vendor: no network, vendor/ only.
# -buildvcs=false: Go >= 1.18 would otherwise shell out to git if the cache sat in a checkout.
export GOENV=off GO111MODULE=on GOPROXY=off GOFLAGS="-mod=vendor -buildvcs=false" CGO_ENABLED=0
export GOCACHE=$WORK/gocache GOPATH=$WORK/gopath GOTOOLCHAIN=local
# go build's scratch files (several GB at the link steps) go under the cache too, not /tmp,
# which may be a small tmpfs; and they go away with work/.
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
GOROOT=$("$GO" env GOROOT)
export GOROOT # openapi-gen parses the standard library from GOROOT (cf. hack/lib/golang.sh)
unset GOBIN GOOS GOARCH GOEXPERIMENT
log "using $("$GO" version)"

# --- Mend 1: reflect2 v1.0.1 -> v1.0.2 -------------------------------------------------------------
# Vendored github.com/modern-go/reflect2 v1.0.1 reaches into Go runtime map internals that
# changed in Go 1.18: built with Go 1.19, the apiserver dies with SIGSEGV in json-iterator's map
# handling on its first JSON request. v1.0.2 (same API) fixes it; Debian ships its source.
# go.mod's replace and vendor/modules.txt must name the new version, else Go reports
# inconsistent vendoring.
log "mend 1: vendored reflect2 v1.0.1 -> v1.0.2 (from $REFLECT2_SRC)"
R2=vendor/github.com/modern-go/reflect2
grep -q '^	github.com/modern-go/reflect2 => github.com/modern-go/reflect2 v1.0.1$' go.mod \
  || die "go.mod: reflect2 replace line not as expected"
find "$R2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete # keep LICENSE etc.
find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
  -exec cp -t "$R2" {} +
sed -i 's|^\(	github.com/modern-go/reflect2 => github.com/modern-go/reflect2\) v1.0.1$|\1 v1.0.2|' go.mod
sed -i 's|^\(# github.com/modern-go/reflect2\( v1.0.1\)\{0,1\} => github.com/modern-go/reflect2\) v1.0.1$|\1 v1.0.2|;
        s|^# github.com/modern-go/reflect2 v1.0.1 => |# github.com/modern-go/reflect2 v1.0.2 => |' vendor/modules.txt
if grep -n 'modern-go/reflect2.*v1\.0\.1' go.mod vendor/modules.txt >&2; then
  die "mend 1: reflect2 v1.0.1 still referenced"
fi

# --- Mend 2: vendor/modules.txt from the Go 1.15 layout to one Go >= 1.16 accepts ----------------
# Go 1.15 wrote the version-less "# path => replacement" lines (replacements of modules that
# provide no package of their own) in sorted order between the module blocks, so package lines
# ended up after such a line, i.e. under the wrong or a version-less module. Go 1.19 attributes
# each package line to the module header above it, finds the result disagreeing with go.mod and
# stops ("inconsistent vendoring" / "updates to go.mod needed"). Rewrite: every package line under
# the header of its own module (the longest versioned module path that prefixes it, which is how
# Go chose the module when it vendored it), the "## explicit" markers kept with their module,
# and all version-less replacement lines at the end.
log "mend 2: vendor/modules.txt to the Go >= 1.16 layout"
awk '
  function fail(msg) { print "kube-build: mend 2: " msg > "/dev/stderr"; bad = 1; exit 1 }
  /^# / {
    if ($3 == "=>") { wild[++nw] = $0; cur = ""; next }   # version-less replacement line
    if ($2 in hdr) fail("module listed twice: " $2)
    cur = $2; order[++nm] = cur; hdr[cur] = $0; next
  }
  /^## / { if (cur == "") fail("metadata line without a module: " $0); meta[cur] = meta[cur] $0 "\n"; next }
  NF == 0 { next }
  NF == 1 { pkg[++np] = $1; next }
  { fail("unexpected line: " $0) }
  END {
    if (bad) exit 1
    for (i = 1; i <= np; i++) {
      p = pkg[i]
      while (!(p in hdr)) {
        if (p !~ /\//) fail("no module provides package " pkg[i])
        sub(/\/[^\/]*$/, "", p)
      }
      pk[p] = pk[p] pkg[i] "\n"
    }
    for (i = 1; i <= nm; i++) printf "%s\n%s%s", hdr[order[i]], meta[order[i]], pk[order[i]]
    for (i = 1; i <= nw; i++) print wild[i]
  }' vendor/modules.txt >vendor/modules.txt.new
[[ $(grep -c . vendor/modules.txt) == $(grep -c . vendor/modules.txt.new) ]] \
  || die "mend 2: line count changed"
mv vendor/modules.txt.new vendor/modules.txt
# Cheap proof that Go now accepts vendor/ and resolves every import (fails in seconds, before
# the long build).
"$GO" list -deps "${BINARIES[@]/#/./cmd/}" >/dev/null

# --- Mend 3: generate pkg/generated/openapi/zz_generated.openapi.go -----------------------------
# Upstream generates this file at build time (build/root/Makefile.generated_files, target
# gen_openapi) and does not ship it; the apiserver does not compile without it. (All other
# generated files - deepcopy, conversion, defaults, bindata - are in the tarball.)
# As upstream: collect every dir (staging/src/ named as vendor/) with a Go file carrying a
# "// +k8s:" tag, keep the files tagged +k8s:openapi-gen= (minus code-generator and
# sample-apiserver), and run the vendored openapi-gen over those packages in GOPATH mode (gengo of
# this era only understands GOPATH), with its API-rule-violation report checked against
# api/api-rules/violation_exceptions.list like upstream's `make` does.
log "mend 3: generating pkg/generated/openapi/zz_generated.openapi.go with the vendored openapi-gen"
mkdir -p "$WORK/tools"
"$GO" build -o "$WORK/tools/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen
mapfile -t go_dirs < <(
  find -H . \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune \
    -o -type f -name '*.go' -print \
    | sed 's|^\./staging/src|vendor|; s|^\./||; s|/[^/]*$||' | LC_ALL=C sort -u)
mapfile -t openapi_dirs < <(
  for d in "${go_dirs[@]}"; do
    case $d in vendor/k8s.io/code-generator|vendor/k8s.io/code-generator/*) continue ;;
      vendor/k8s.io/sample-apiserver|vendor/k8s.io/sample-apiserver/*) continue ;; esac
    for f in "$d"/*.go; do [[ -f $f ]] && printf '%s\n' "$f"; done
  done | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
    | sed 's|/[^/]*$||' | LC_ALL=C sort -u)
[[ ${#openapi_dirs[@]} -gt 50 ]] || die "mend 3: only ${#openapi_dirs[@]} openapi-gen packages found"
log "mend 3: ${#openapi_dirs[@]} packages tagged +k8s:openapi-gen"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$TREE" "$GOPATH/src/k8s.io/kubernetes"
inputs=$(printf 'k8s.io/kubernetes/%s,' "${openapi_dirs[@]}")
(
  cd "$GOPATH/src/k8s.io/kubernetes" # gengo resolves packages relative to GOPATH/src
  GO111MODULE=off GOFLAGS='' "$WORK/tools/openapi-gen" --logtostderr --v 0 \
    -i "${inputs%,}" \
    -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$WORK/KUBE_violations.report"
)
[[ -s pkg/generated/openapi/zz_generated.openapi.go ]] || die "mend 3: openapi-gen wrote nothing"
if ! diff -u api/api-rules/violation_exceptions.list "$WORK/KUBE_violations.report" >&2; then
  die "mend 3: API rule violations differ from api/api-rules/violation_exceptions.list (the set of input packages is not upstream's)"
fi

# --- Build ------------------------------------------------------------------------------------------
# Version stamps as hack/lib/version.sh would set them for this git-archive tarball, but with
# module-mode package paths (upstream used .../kubernetes/vendor/k8s.io/... in GOPATH mode), so
# `kubectl version` and the apiserver's /version report v1.20.2.
git_commit=$(sed -n "s/^ *KUBE_GIT_COMMIT='\([0-9a-f]\{40\}\)'$/\1/p" hack/lib/version.sh)
[[ -n $git_commit ]] || die "no commit id in hack/lib/version.sh"
build_date=$(date -u +'%Y-%m-%dT%H:%M:%SZ')
ldflags="-s -w" # no symbol table/DWARF: ~30% smaller; these binaries are not debugged here
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  ldflags+=" -X $pkg.gitCommit=$git_commit -X $pkg.gitTreeState=archive -X $pkg.buildDate=$build_date"
done
mkdir -p "$VERSION_DIR"
TMP_BIN=$(mktemp -d "$VERSION_DIR/bin.tmp.XXXXXX")
log "building ${BINARIES[*]} (go build -p 2; 5-10 minutes on 2 cores)"
# Tags as hack/lib/golang.sh: selinux (label support in kubelet), notest.
"$GO" build -p 2 -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$TMP_BIN/" \
  "${BINARIES[@]/#/./cmd/}"
have_all "$TMP_BIN" || die "go build did not produce every binary"
"$TMP_BIN/kubectl" version --client --short 2>/dev/null | grep -q "$KUBE_VERSION" \
  || die "built kubectl does not report $KUBE_VERSION"
{
  echo "$STAMP_WANT"
  echo "source=$(basename "$DSC") sha256=$(sha256sum "$DSC" | cut -d' ' -f1)"
  echo "go=$("$GO" env GOVERSION) commit=$git_commit built=$build_date"
} >"$TMP_BIN/.stamp"
chmod 755 "$TMP_BIN"

# Publish atomically: readers see the old complete dir or the new complete one (the stamp lives
# inside it), never a half-written binary.
if [[ -e $BIN_DIR ]]; then
  rm -rf "$BIN_DIR.old"
  mv "$BIN_DIR" "$BIN_DIR.old"
fi
mv "$TMP_BIN" "$BIN_DIR"
TMP_BIN=""
rm -rf "$BIN_DIR.old"

if [[ ${WEFT_KUBE_KEEP_WORK:-0} != 1 ]]; then
  cd "$CACHE"
  chmod -R u+w "$WORK" 2>/dev/null || true
  rm -rf "$WORK" # ~GBs of tree and Go cache; src/ stays, so a rebuild is offline
fi
log "done in $((SECONDS - START))s: $BIN_DIR"
printf '%s\n' "$BIN_DIR"
