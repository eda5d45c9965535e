#!/usr/bin/env bash
# Runs Home Assistant's own checker on every corpus case, to compare by hand with
# each case's expected.txt (Home Assistant stops at the first loader error, so it
# confirms the first problem of a case, and what it accepts). Not used by the tests.
#   python3 -m venv /tmp/ha && /tmp/ha/bin/pip install homeassistant==2024.3.3
#   HASS=/tmp/ha/bin/hass tools/ha_check_corpus.sh [case...]
set -euo pipefail
hass=${HASS:-hass}
corpus="$(cd "$(dirname "$0")/.." && pwd)/tests/corpus"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || mapfile -t cases < <(ls "$corpus")
for case in "${cases[@]}"; do
    work=$(mktemp -d)
    cp -a "$corpus/$case/." "$work/"
    rm -f "$work/expected.txt"
    echo "=== $case"
    (cd "$work" && "$hass" --script check_config -c "$work" 2>&1 || true) \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e "s#$work/##g" \
        | grep -v -e '^INFO:' -e 'Testing configuration at' -e '^$' || true
    rm -rf "$work"
done
