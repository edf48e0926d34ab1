#!/usr/bin/env bash
# Builds the real native OpenEVSE WiFi firmware (firmware.md §5.1):
#   pio run -e native_openevse  ->  <checkout>/.pio/build/native_openevse/program
# Needs a machine where PlatformIO can download its packages and libraries.
#
# Usage: native/build-firmware.sh [--checkout DIR | --repo URL --ref REF] [--out DIR] [--work DIR]
#   --checkout DIR  build this existing firmware checkout
#   --repo URL      clone this repository (default: the OpenEVSE firmware on GitHub) ...
#   --ref REF       ... at this branch, tag or commit (default: master), shallow
#   --work DIR      where --repo clones go (default: build/firmware under the current dir)
#   --out DIR       copy the binary to DIR/program (default: leave it in .pio/build)
#
# Everything it says goes to stderr; stdout has one line, the binary's absolute path, so
#   NATIVE_BINARY_PATH=$(native/build-firmware.sh --ref master | tail -1)
# works. Env: EPOXYDUINO_URL, EPOXYDUINO_REF for the sibling checkout quirk below.
set -euo pipefail

DEFAULT_REPO=https://github.com/OpenEVSE/openevse_esp32_firmware.git
DEFAULT_REF=master
PIO_ENV=native_openevse
PLATFORMIO_PIN=6.2.0   # the version .github/workflows/integration.yml installs
EPOXYDUINO_URL=${EPOXYDUINO_URL:-https://github.com/jeremypoulter/EpoxyDuino.git}
EPOXYDUINO_REF=${EPOXYDUINO_REF:-}

say() { printf 'build-firmware: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; }

checkout="" repo="" ref="" out="" work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --checkout) checkout=${2:?--checkout needs a directory}; shift 2 ;;
    --repo) repo=${2:?--repo needs a URL}; shift 2 ;;
    --ref) ref=${2:?--ref needs a branch, tag or commit}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --work) work=${2:?--work needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done
if [ -n "$checkout" ] && { [ -n "$repo" ] || [ -n "$ref" ]; }; then
  die "use either --checkout DIR or --repo URL --ref REF, not both"
fi

# ---- prerequisites: report every missing one with its fix, then stop ---------------------
missing=0
need() { say "missing: $1"; say "  fix: $2"; missing=1; }

have_dev_package() { # $1 = Debian package, $2 = pkg-config module ('' = none), $3 = a header
  if [ -n "$2" ] && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "$2"; then
    return 0
  fi
  if command -v dpkg-query >/dev/null 2>&1 \
    && [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; then
    return 0
  fi
  [ -f "/usr/include/$3" ]
}

command -v git >/dev/null 2>&1 || need "git" "sudo apt-get install -y git"
command -v g++ >/dev/null 2>&1 || need "a C++ compiler (g++)" "sudo apt-get install -y g++"

pio=()
if command -v pio >/dev/null 2>&1; then
  pio=(pio)
elif command -v python3 >/dev/null 2>&1 && python3 -m platformio --version >/dev/null 2>&1; then
  pio=(python3 -m platformio)
else
  need "PlatformIO (pio)" "python3 -m pip install platformio==$PLATFORMIO_PIN  (or: sudo apt-get install -y python3-pip first)"
fi

have_dev_package libavahi-client-dev avahi-client avahi-client/client.h \
  || need "libavahi-client-dev" "sudo apt-get install -y libavahi-client-dev"
have_dev_package libavahi-common-dev '' avahi-common/address.h \
  || need "libavahi-common-dev" "sudo apt-get install -y libavahi-common-dev"
have_dev_package libssl-dev openssl openssl/ssl.h \
  || need "libssl-dev" "sudo apt-get install -y libssl-dev"

[ "$missing" -eq 0 ] || die "prerequisites missing (see above); nothing was built"

# ---- the firmware checkout ------------------------------------------------------------------
if [ -z "$checkout" ]; then
  repo=${repo:-$DEFAULT_REPO}
  ref=${ref:-$DEFAULT_REF}
  work=${work:-build/firmware}
  checkout="$work/$(basename "${repo%.git}")"
  # init + fetch of one ref works for branches, tags and commit ids alike (clone --branch
  # does not take a commit id), and re-running reuses the directory and its .pio cache.
  if [ ! -d "$checkout/.git" ]; then
    say "cloning $repo into $checkout"
    mkdir -p "$checkout"
    git -C "$checkout" init -q
    git -C "$checkout" remote add origin "$repo"
  elif [ "$(git -C "$checkout" remote get-url origin)" != "$repo" ]; then
    die "$checkout is a clone of $(git -C "$checkout" remote get-url origin), not $repo; use another --work"
  fi
  say "fetching $ref (shallow)"
  git -C "$checkout" fetch -q --depth 1 origin "$ref" >&2
  git -C "$checkout" checkout -q --detach FETCH_HEAD >&2
fi
[ -f "$checkout/platformio.ini" ] || die "$checkout has no platformio.ini: not a firmware checkout"
checkout=$(cd "$checkout" && pwd -P)
say "firmware: $checkout at $(git -C "$checkout" rev-parse --short HEAD 2>/dev/null || echo 'unknown commit')"

# ---- firmware.md §5.1 quirk: `lib_extra_dirs = ../EpoxyDuino/libraries` -----------------------
# Some branches take EpoxyDuino's libraries from a sibling checkout instead of the git URL in
# lib_deps. Provide it when the (uncommented) platformio.ini refers to it and it is missing.
if grep -Eq '^[^;#]*\.\./EpoxyDuino' "$checkout/platformio.ini"; then
  sibling="$(dirname "$checkout")/EpoxyDuino"
  if [ ! -d "$sibling" ]; then
    say "platformio.ini uses ../EpoxyDuino: cloning $EPOXYDUINO_URL${EPOXYDUINO_REF:+ at $EPOXYDUINO_REF} into $sibling"
    mkdir -p "$sibling"
    git -C "$sibling" init -q
    git -C "$sibling" remote add origin "$EPOXYDUINO_URL"
    git -C "$sibling" fetch -q --depth 1 origin "${EPOXYDUINO_REF:-HEAD}" >&2
    git -C "$sibling" checkout -q --detach FETCH_HEAD >&2
  fi
  # Its revision decides how native mDNS behaves (firmware.md §2.2): say which one is used.
  say "EpoxyDuino: $sibling at $(git -C "$sibling" rev-parse --short HEAD 2>/dev/null || echo 'unknown commit')"
fi

# ---- build ----------------------------------------------------------------------------------
say "running: ${pio[*]} run -e $PIO_ENV"
"${pio[@]}" run --project-dir "$checkout" -e "$PIO_ENV" >&2

binary="$checkout/.pio/build/$PIO_ENV/program"
[ -x "$binary" ] || die "the build finished but $binary is missing or not executable"

if [ -n "$out" ]; then
  mkdir -p "$out"
  cp "$binary" "$out/program"
  binary="$(cd "$out" && pwd -P)/program"
fi
say "built $binary"
printf '%s\n' "$binary"
