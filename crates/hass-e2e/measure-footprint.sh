#!/bin/bash
# Idle footprint of a running hass-suite and every process under it:
# RSS of each, and CPU of all together over SECONDS (from /proc utime+stime).
#   hass-suite --config suite.yaml & sleep 20; bash crates/hass-e2e/measure-footprint.sh $! 60
root=$1; secs=${2:-60}
pids() { local p=$1; echo $p; for c in $(cat /proc/$p/task/*/children 2>/dev/null); do pids $c; done; }
ticks() { local t=0; for p in $(pids $root); do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t+$1+$2)); done; echo $t; }
t0=$(ticks); sleep $secs; t1=$(ticks)
hz=$(getconf CLK_TCK)
for p in $(pids $root); do printf "%-22s pid %-6s RSS %6s KiB\n" "$(cat /proc/$p/comm)" $p "$(awk '/VmRSS/{print $2}' /proc/$p/status)"; done
echo "total RSS KiB: $(for p in $(pids $root); do awk '/VmRSS/{print $2}' /proc/$p/status; done | paste -sd+ | bc)"
echo "CPU over ${secs}s: $(( (t1-t0) * 1000 / hz / secs )) millicores ($((t1-t0)) ticks at $hz Hz)"
