#!/usr/bin/env bash
# End-to-end test of the frontdesk Debian package under a real systemd.
#
# Boots a minimal Debian bookworm in systemd-nspawn, installs the given .deb, and checks the
# unit (verify, security score, sandbox in force), the first-install store identity, the
# unconfigured start, credential delivery, READY and status text, the structured start line
# in the journal, reload, the admin socket's access rules, reinstall/upgrade keeping data,
# remove and purge.
#
# Usage: tests/systemd/nspawn-test.sh target/debian/frontdesk_<version>_amd64.deb
#
# Needs root and the host packages debootstrap and systemd-container. Prints SKIP and exits 0
# when containers cannot run here at all (not root, tools missing, the container
# does not boot); FRONTDESK_NSPAWN_REQUIRE=1 turns those into failures.
#
# Environment:
#   FRONTDESK_CACHE            cache folder (default .cache): nspawn-rootfs.tar and the
#                              debootstrap package cache, so later runs skip the download
#   FRONTDESK_NSPAWN_MIRROR    Debian mirror (default: from /etc/apt/sources.list.d/debian.sources)
#   FRONTDESK_NSPAWN_PACKAGES  extra packages for the root file system (comma separated)
#   FRONTDESK_TEST_CONFIG      frontdesk.toml to install before the first start
#   FRONTDESK_TEST_MODEL       GGUF file installed as /var/lib/frontdesk/models/model.gguf (the
#                              shipped config's model_path) before the first start
#   FRONTDESK_NSPAWN_KEEP=1    keep the work folder (root file system, logs) for debugging
set -euo pipefail

readonly SUITE=bookworm
# The runtime dependencies of the package must be in the image: the container has no network
# (--private-network keeps the test's ports off the host), so apt can only use what is there.
readonly BASE_PACKAGES="systemd,systemd-sysv,dbus,adduser,procps,libgomp1"
readonly CRED_NAMES="whatsapp-app-secret whatsapp-token whatsapp-verify-token magicline-api-key tunnel-token"
readonly CREDSTORE=/etc/credstore.encrypted

log() { printf '%s\n' "$*"; }
ok() { printf 'ok - %s\n' "$*"; }

skip() {
    if [[ "${FRONTDESK_NSPAWN_REQUIRE:-0}" == 1 ]]; then
        printf 'FAIL - cannot run (FRONTDESK_NSPAWN_REQUIRE=1): %s\n' "$*" >&2
        exit 1
    fi
    printf 'SKIP - nspawn test not run: %s\n' "$*"
    exit 0
}

SDPID=""
fail() {
    printf 'FAIL - %s\n' "$*" >&2
    if [[ -n "$SDPID" ]]; then
        log "--- systemctl status frontdesk ---" >&2
        in_ct systemctl --no-pager status frontdesk >&2 || true
        log "--- journalctl -u frontdesk (last 60) ---" >&2
        in_ct journalctl --no-pager -u frontdesk -n 60 >&2 || true
    fi
    exit 1
}

# ---------------------------------------------------------------- preflight

[[ $# -eq 1 ]] || { echo "usage: $0 path/to/frontdesk.deb" >&2; exit 2; }
DEB="$(realpath -e "$1")" || { echo "no such .deb: $1" >&2; exit 2; }

[[ "$(id -u)" -eq 0 ]] || skip "needs root"
for tool in debootstrap systemd-nspawn nsenter tar; do
    command -v "$tool" >/dev/null || skip "$tool not installed (apt-get install debootstrap systemd-container)"
done

CACHE="$(realpath -m "${FRONTDESK_CACHE:-.cache}")"
mkdir -p "$CACHE/debootstrap"
PACKAGES="$BASE_PACKAGES${FRONTDESK_NSPAWN_PACKAGES:+,$FRONTDESK_NSPAWN_PACKAGES}"

# Outside the repository, so that no bind mount or cache copy can ever contain it.
WORK="$(mktemp -d /var/tmp/frontdesk-nspawn.XXXXXX)"
ROOT="$WORK/rootfs"
NSPAWN_PID=""

teardown() {
    local rc=$?
    if [[ -n "$NSPAWN_PID" ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        wait "$NSPAWN_PID" 2>/dev/null || true
    fi
    if [[ "${FRONTDESK_NSPAWN_KEEP:-0}" == 1 ]]; then
        log "work folder kept: $WORK"
    elif findmnt -rn -o TARGET | grep "^$WORK" >/dev/null; then
        log "warning: mounts left under $WORK, not removing it" >&2
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- root file system

mirror() {
    if [[ -n "${FRONTDESK_NSPAWN_MIRROR:-}" ]]; then
        echo "$FRONTDESK_NSPAWN_MIRROR"
        return
    fi
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        # First URIs: of a stanza that carries the main suite (not -security).
        uri="$(awk '/^URIs:/ {u=$2} /^Suites:/ && u != "" && $0 !~ /security/ {print u; exit}' \
            /etc/apt/sources.list.d/debian.sources)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

TARBALL="$CACHE/nspawn-rootfs.tar"
STAMP="$CACHE/nspawn-rootfs.packages"
if [[ ! -f "$TARBALL" || "$(cat "$STAMP" 2>/dev/null)" != "$SUITE $PACKAGES" ]]; then
    log "building $SUITE root file system (packages: $PACKAGES) from $(mirror)"
    build="$WORK/build"
    if ! debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debootstrap" \
        "$SUITE" "$build" "$(mirror)" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        fail "debootstrap failed (network or mirror?), log above"
    fi
    # A fresh machine id is generated at every boot; never bake one into the image.
    : >"$build/etc/machine-id"
    tar -C "$build" -cf "$TARBALL.tmp" .
    mv -f "$TARBALL.tmp" "$TARBALL"
    echo "$SUITE $PACKAGES" >"$STAMP"
    rm -rf --one-file-system "$build"
fi
mkdir "$ROOT"
tar -C "$ROOT" -xf "$TARBALL"
cp "$DEB" "$ROOT/var/tmp/frontdesk.deb"
if [[ -n "${FRONTDESK_TEST_CONFIG:-}" ]]; then
    cp "$FRONTDESK_TEST_CONFIG" "$ROOT/var/tmp/frontdesk.toml"
fi
if [[ -n "${FRONTDESK_TEST_MODEL:-}" ]]; then
    cp "$FRONTDESK_TEST_MODEL" "$ROOT/var/tmp/model.gguf"
fi

# ---------------------------------------------------------------- boot

systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --private-network \
    --console=read-only -b >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 1 200); do
    SDPID="$(pgrep -P "$NSPAWN_PID" -x systemd || true)"
    [[ -n "$SDPID" ]] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$SDPID" ]]; then
    tail -n 20 "$WORK/nspawn.log" >&2 || true
    skip "systemd-nspawn could not boot a container here (log above)"
fi

# Run a command inside the container with a clean environment.
in_ct() {
    nsenter -t "$SDPID" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}

# Poll rather than `is-system-running --wait`, which can miss the end of a boot that is
# already under way and then wait forever.
state=""
end=$((SECONDS + 90))
while ((SECONDS < end)); do
    state="$(in_ct systemctl is-system-running 2>/dev/null || true)"
    [[ "$state" == running || "$state" == degraded ]] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.2
done
case "$state" in
    running) ;;
    degraded) log "note: container booted degraded: $(in_ct systemctl --failed --no-legend | tr '\n' ' ')" ;;
    *) tail -n 20 "$WORK/nspawn.log" >&2 || true; skip "container did not finish booting (state '$state')" ;;
esac
ok "container booted (systemd $(in_ct systemctl --version | awk 'NR==1 {print $2}'))"

# Wait until COMMAND succeeds, up to SECONDS; for states reached asynchronously (journal).
wait_for() {
    local seconds=$1
    shift
    local end=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}

show() { in_ct systemctl show -P "$1" frontdesk.service; }
state_is() { [[ "$(show "$1")" == "$2" ]]; }

APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# ---------------------------------------------------------------- install

if ! in_ct apt-get install "${APT_OPTS[@]}" /var/tmp/frontdesk.deb >"$WORK/install.log" 2>&1; then
    cat "$WORK/install.log" >&2
    fail "apt-get install of the package failed"
fi
grep -q "store identity" "$WORK/install.log" || { cat "$WORK/install.log"; fail "postinst said nothing about the store identity"; }
grep -q "whatsapp-token" "$WORK/install.log" || fail "postinst did not tell which credentials to provide"
ok "package installed"

in_ct getent passwd frontdesk >/dev/null || fail "user frontdesk missing"
in_ct getent group frontdesk-admin >/dev/null || fail "group frontdesk-admin missing"
ok "sysusers created frontdesk and frontdesk-admin"

tls_key_mode="$(in_ct stat -c '%a %U' /var/lib/frontdesk/console-tls/key.pem 2>/dev/null)" \
    || { cat "$WORK/install.log"; fail "postinst did not make the console certificate"; }
[[ "$tls_key_mode" == "600 frontdesk" ]] || fail "console key has mode/owner '$tls_key_mode', want '600 frontdesk'"
grep -q "SHA-256 fingerprint" "$WORK/install.log" || fail "postinst did not print the console certificate's fingerprint"
ok "console certificate made at install"

ident_mode="$(in_ct stat -c '%a %U' "$CREDSTORE/frontdesk.store-identity" 2>/dev/null)" \
    || fail "postinst did not create $CREDSTORE/frontdesk.store-identity"
[[ "$ident_mode" == "600 root" ]] || fail "store identity has mode/owner '$ident_mode', want '600 root'"
in_ct systemd-creds decrypt --name=store-identity "$CREDSTORE/frontdesk.store-identity" - \
    | grep '^AGE-SECRET-KEY-1' >/dev/null || fail "store identity does not decrypt to an age identity"
IDENT_SUM="$(in_ct sha256sum "$CREDSTORE/frontdesk.store-identity")"
ok "store identity created as encrypted credential"

[[ "$(show ActiveState)" == inactive ]] || fail "service started on first install (should wait for the admin)"
[[ "$(in_ct systemctl is-enabled frontdesk.service || true)" == disabled ]] \
    || fail "service enabled on first install"
ok "first install leaves the service stopped and disabled"
[[ "$(in_ct systemctl is-enabled frontdesk-relay.service || true)" == disabled ]] \
    || fail "frontdesk-relay.service missing or enabled on install (it belongs to relay servers only)"
in_ct getent passwd frontdesk-relay >/dev/null || fail "user frontdesk-relay not created"
ok "the relay's unit is installed and disabled"
scripts="$(in_ct sh -c 'ls /usr/share/doc/frontdesk/examples/scripts/*.toml | wc -l')"
[[ "$scripts" == 7 ]] || fail "example chat scripts: $scripts installed, want 7"
ok "the example chat scripts are installed"

UNIT=/usr/lib/systemd/system/frontdesk.service
in_ct test -f "$UNIT" || UNIT=/lib/systemd/system/frontdesk.service
verify_err="$(in_ct systemd-analyze verify "$UNIT" 2>&1 >/dev/null)" || fail "systemd-analyze verify failed: $verify_err"
[[ -z "$verify_err" ]] || fail "systemd-analyze verify printed: $verify_err"
ok "systemd-analyze verify is silent"
in_ct systemd-analyze security --offline=yes --threshold=15 "$UNIT" >"$WORK/security.log" 2>&1 \
    || { cat "$WORK/security.log" >&2; fail "exposure above 1.5"; }
ok "$(grep -o 'Overall exposure level.*' "$WORK/security.log")"

# ---------------------------------------------------------------- unconfigured start

if [[ -n "${FRONTDESK_TEST_CONFIG:-}" ]]; then
    in_ct install -m 0644 /var/tmp/frontdesk.toml /etc/frontdesk/frontdesk.toml
fi
if [[ -n "${FRONTDESK_TEST_MODEL:-}" ]]; then
    in_ct install -d -o frontdesk -g frontdesk -m 0700 /var/lib/frontdesk /var/lib/frontdesk/models
    in_ct install -o frontdesk -g frontdesk -m 0600 /var/tmp/model.gguf /var/lib/frontdesk/models/model.gguf
fi

in_ct systemctl enable --now frontdesk.service >/dev/null 2>&1 || fail "systemctl enable --now frontdesk failed"
[[ "$(in_ct systemctl is-active frontdesk.service)" == active ]] || fail "service not active"
[[ "$(show SubState)" == running ]] || fail "service not running (SubState $(show SubState))"
status_text="$(show StatusText)"
[[ -n "$status_text" ]] || fail "no STATUS= text from the daemon"
ok "unconfigured service is active/running (READY reached), status: $status_text"

creds="$(in_ct ls /run/credentials/frontdesk.service | tr '\n' ' ')"
[[ "$creds" == "store-identity " ]] || fail "credentials of the unconfigured service: '$creds', want only store-identity"
ok "missing optional credentials do not fail the unit"

has_start_event() {
    in_ct journalctl -u frontdesk.service -o json FRONTDESK_EVENT=service.started | grep '"FRONTDESK_EVENT":"service.started"' >/dev/null
}
wait_for 15 has_start_event || fail "journal has no FRONTDESK_EVENT=service.started entry"
ok "journal has the structured start entry"

# ---------------------------------------------------------------- credentials

for name in $CRED_NAMES; do
    printf 'test-%s' "$name" | in_ct systemd-creds encrypt --name="$name" - "$CREDSTORE/frontdesk.$name" 2>/dev/null \
        || fail "systemd-creds encrypt $name failed"
done
in_ct systemctl restart frontdesk.service || fail "restart with all credentials failed"
[[ "$(in_ct systemctl is-active frontdesk.service)" == active ]] || fail "service not active with credentials"
for name in store-identity $CRED_NAMES; do
    in_ct test -f "/run/credentials/frontdesk.service/$name" || fail "credential $name not delivered"
done
[[ "$(in_ct cat /run/credentials/frontdesk.service/whatsapp-token)" == test-whatsapp-token ]] \
    || fail "credential whatsapp-token has the wrong content"
ok "all six credentials delivered, status: $(show StatusText)"

# ---------------------------------------------------------------- GPU drop-in

# No NVIDIA device here: this checks that the drop-in loads, that a box without the nodes
# still starts (the "-" prefixes), and that its score stays within 2.0.
DROPIN=/etc/systemd/system/frontdesk.service.d/gpu.conf
in_ct install -D -m 0644 /usr/share/frontdesk/systemd/frontdesk-gpu.conf "$DROPIN" \
    || fail "GPU drop-in not shipped at /usr/share/frontdesk/systemd/frontdesk-gpu.conf"
in_ct systemctl daemon-reload
[[ "$(show DropInPaths)" == *gpu.conf* ]] || fail "GPU drop-in not loaded"
in_ct systemctl restart frontdesk.service || fail "service does not start with the GPU drop-in"
[[ "$(show MemoryDenyWriteExecute)" == no ]] || fail "GPU drop-in did not relax MemoryDenyWriteExecute"
in_ct systemd-analyze security --threshold=20 frontdesk.service >"$WORK/security-gpu.log" 2>&1 \
    || { cat "$WORK/security-gpu.log" >&2; fail "exposure with the GPU drop-in above 2.0"; }
ok "GPU drop-in: service starts, $(grep -o 'Overall exposure level.*' "$WORK/security-gpu.log")"
in_ct rm -f "$DROPIN"
in_ct systemctl daemon-reload
in_ct systemctl restart frontdesk.service || fail "service does not start after removing the GPU drop-in"

# ---------------------------------------------------------------- sandbox in force

MAINPID="$(show MainPID)"
proc_status="$(in_ct cat "/proc/$MAINPID/status")"
grep -q '^NoNewPrivs:[[:space:]]*1$' <<<"$proc_status" || fail "NoNewPrivs not set"
grep -q '^Seccomp:[[:space:]]*2$' <<<"$proc_status" || fail "no seccomp filter"
grep -q '^CapEff:[[:space:]]*0\+$' <<<"$proc_status" || fail "effective capabilities not empty"
grep -q '^CapBnd:[[:space:]]*0\+$' <<<"$proc_status" || fail "bounding set not empty"
grep -q '^Uid:[[:space:]]*'"$(in_ct id -u frontdesk)"'[[:space:]]' <<<"$proc_status" || fail "not running as frontdesk"
ok "daemon runs as frontdesk with no capabilities, NoNewPrivs and seccomp"

# ---------------------------------------------------------------- reload

in_ct systemctl reload frontdesk.service || fail "systemctl reload failed"
wait_for 10 state_is SubState running || fail "service not running after reload"
[[ "$(show MainPID)" == "$MAINPID" ]] || fail "reload replaced the process (SIGHUP should reload in place)"
ok "reload (SIGHUP) keeps the daemon running"

# ---------------------------------------------------------------- admin socket

sock="$(in_ct stat -c '%a %G %F' /run/frontdesk/admin.sock 2>/dev/null)" || fail "no /run/frontdesk/admin.sock"
[[ "$sock" == "660 frontdesk-admin socket" ]] || fail "admin socket is '$sock', want '660 frontdesk-admin socket'"
in_ct frontdesk status >"$WORK/status-root.log" 2>&1 || { cat "$WORK/status-root.log" >&2; fail "frontdesk status as root failed"; }
ok "frontdesk status works for root"

in_ct useradd --no-create-home --shell /usr/sbin/nologin nobody2
in_ct useradd --no-create-home --shell /usr/sbin/nologin --groups frontdesk-admin admin2
if in_ct runuser -u nobody2 -- frontdesk status >"$WORK/status-nobody.log" 2>&1; then
    fail "frontdesk status succeeded for an unprivileged user"
fi
grep -qi 'permission' "$WORK/status-nobody.log" \
    || { cat "$WORK/status-nobody.log" >&2; fail "refusal of an unprivileged user does not say 'permission'"; }
ok "unprivileged user refused: $(head -n 1 "$WORK/status-nobody.log")"
in_ct runuser -u admin2 -- frontdesk status >"$WORK/status-admin.log" 2>&1 \
    || { cat "$WORK/status-admin.log" >&2; fail "frontdesk status failed for a frontdesk-admin member"; }
ok "member of frontdesk-admin gets in"

# ---------------------------------------------------------------- reinstall / upgrade

in_ct runuser -u frontdesk -- sh -c 'echo keep-me > /var/lib/frontdesk/nspawn-test-marker'
in_ct sh -c 'echo "# local edit kept across upgrades" >> /etc/frontdesk/frontdesk.toml'
if ! in_ct apt-get install "${APT_OPTS[@]}" --reinstall /var/tmp/frontdesk.deb >"$WORK/upgrade.log" 2>&1; then
    cat "$WORK/upgrade.log" >&2
    fail "reinstall of the package failed"
fi
[[ "$(in_ct cat /var/lib/frontdesk/nspawn-test-marker)" == keep-me ]] || fail "upgrade lost /var/lib/frontdesk data"
in_ct grep -q 'local edit kept' /etc/frontdesk/frontdesk.toml || fail "upgrade overwrote the edited conffile"
[[ "$(in_ct sha256sum "$CREDSTORE/frontdesk.store-identity")" == "$IDENT_SUM" ]] || fail "upgrade replaced the store identity"
in_ct test -f "$CREDSTORE/frontdesk.whatsapp-token" || fail "upgrade lost a credential"
wait_for 30 state_is ActiveState active || fail "service not active after upgrade"
[[ "$(show MainPID)" != "$MAINPID" ]] || fail "upgrade did not restart the service"
[[ "$(in_ct systemctl is-enabled frontdesk.service)" == enabled ]] || fail "upgrade changed the enabled state"
ok "reinstall keeps data, config edits, identity and credentials, and restarts the service"

# ---------------------------------------------------------------- remove and purge

in_ct apt-get remove "${APT_OPTS[@]}" frontdesk >"$WORK/remove.log" 2>&1 || { cat "$WORK/remove.log" >&2; fail "remove failed"; }
[[ "$(show ActiveState)" != active ]] || fail "service still active after remove"
in_ct test -f /var/lib/frontdesk/nspawn-test-marker || fail "remove deleted /var/lib/frontdesk"
in_ct test -f "$CREDSTORE/frontdesk.store-identity" || fail "remove deleted the store identity"
ok "remove stops the service and keeps data and credentials"

in_ct apt-get purge "${APT_OPTS[@]}" frontdesk >"$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log" >&2; fail "purge failed"; }
! in_ct test -e /var/lib/frontdesk || fail "purge left /var/lib/frontdesk"
! in_ct test -e /etc/frontdesk || fail "purge left /etc/frontdesk"
leftover="$(in_ct find "$CREDSTORE" -name 'frontdesk.*' 2>/dev/null || true)"
[[ -z "$leftover" ]] || fail "purge left credentials: $leftover"
! in_ct test -e "$UNIT" || fail "purge left the unit file"
ok "purge deletes config, credentials and state"

log "PASS - nspawn package test"
