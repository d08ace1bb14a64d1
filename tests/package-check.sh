#!/usr/bin/env bash
# Packaging checks: build the .deb, lintian, systemd-analyze verify/security on the unit, and the
# end-to-end test under a real systemd (tests/systemd/nspawn-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

./install.sh --deb
deb=$(ls -t target/debian/frontdesk_*.deb | head -1)
echo "==> lintian $deb"
lintian --fail-on error,warning "$deb"
echo "ok - lintian"

echo "==> systemd-analyze"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# verify resolves ExecStart: point it at the built binary.
sed "s|/usr/bin/frontdesk|$ROOT/target/release/frontdesk|g" systemd/frontdesk.service > "$work/frontdesk.service"
err=$(systemd-analyze verify "$work/frontdesk.service" 2>&1 >/dev/null || true)
if [[ -n "$err" ]]; then echo "systemd-analyze verify: $err" >&2; exit 1; fi
echo "ok - systemd-analyze verify"
systemd-analyze security --offline=yes --threshold=15 systemd/frontdesk.service >/dev/null
echo "ok - systemd-analyze security <= 1.5"
# A drop-in's [Service] lines extend the unit's, as appending them to the unit file does.
cat systemd/frontdesk.service systemd/frontdesk-gpu.conf > "$work/frontdesk-gpu.service"
systemd-analyze security --offline=yes --threshold=20 "$work/frontdesk-gpu.service" >/dev/null
echo "ok - systemd-analyze security with the GPU drop-in <= 2.0"

FRONTDESK_TEST_MODEL="${FRONTDESK_TEST_MODEL:-$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
    tests/systemd/nspawn-test.sh "$deb"
echo "1 passed, 0 failed: package checks"
