#!/usr/bin/env bash
# Runs Home Assistant's own checker on every corpus case, to compare its
# messages by hand with each case's expected.txt (Home Assistant stops at the
# first loader error, so it confirms the first problem of a case, and what it
# accepts). The verdicts alone are a test (corpus_verdicts_agree_with_home_assistant_2026_11).
# Home Assistant is the one of the tests' root filesystem (scripts/ha-rootfs);
# run as root from the repository:
#   crates/hass-config-check/tools/ha_check_corpus.sh [case...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(bash "$here/../../../scripts/ha-rootfs")"
corpus="$here/../tests/corpus"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || mapfile -t cases < <(ls "$corpus")
for case in "${cases[@]}"; do
    work=$(mktemp -d "$root/tmp/corpus-XXXXXX")
    cp -a "$corpus/$case/." "$work/"
    rm -f "$work/expected.txt"
    inner="/tmp/$(basename "$work")"
    echo "=== $case"
    chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
        /usr/local/bin/hass --script check_config -c "$inner" 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e "s#$inner/##g" \
        | grep -v -e '^INFO:' -e 'Testing configuration at' -e '^$' || true
    rm -rf "$work"
done
