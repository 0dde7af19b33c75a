#!/usr/bin/env bash
# The integration tier (make integration): two pytest sessions side by side.
#
#   [alone] tests whose verdict rests on timing (marked `timing`: a stall, a rate, an outage
#           window, the predictor) and tests of the host's one NFS server (marked `nfs`),
#           one after another at normal CPU priority;
#   [rest]  every other integration test in WORKERS pytest-xdist workers at the lowest CPU
#           and I/O priority (nice 19, ionice best-effort 7): they take only the CPU the
#           timing tests leave (a timing test's guest uses about a third of the 2 cores;
#           the rest are bound by the CPU their TCG guests need, not by waiting).
#
# Beside a second TCG guest at the same priority a timing verdict flips now and then; at
# nice 19 against nice 0 the kernel gives the timing test's QEMU the CPU whenever it wants
# it.  libvirtd starts its domains' QEMUs itself, so it is reniced to 19 for the run (and
# back to its own priority after), or its guests would compete at full weight.
#
# usage: tools/integration.sh PYTHON WORKERS [pytest args...]
#   WORKERS=0: [rest] in one process.  APART=1: [alone] after [rest], not beside it.
#   With pytest args choosing a subset, a session they leave empty (pytest's exit 5) is
#   fine; the whole tier must run tests in both.
set -uo pipefail
py=$1 workers=$2
shift 2
subset=$([ $# -gt 0 ] && echo yes || true)
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadgroup)
sudo=$([ "$(id -u)" = 0 ] || echo sudo)

# libvirtd's priority, restored on every exit
declare -A niced=()
restore() {
    for pid in "${!niced[@]}"; do $sudo renice -n "${niced[$pid]}" -p "$pid" >/dev/null 2>&1; done
}
trap restore EXIT
trap 'trap - TERM; kill -TERM 0' TERM
if [ -z "${APART:-}" ]; then
    for pid in $(pgrep -x 'libvirtd|virtqemud'); do
        old=$(ps -o ni= -p "$pid" | tr -d ' ')
        if [ -n "$old" ] && $sudo renice -n 19 -p "$pid" >/dev/null 2>&1; then niced[$pid]=$old; fi
    done
fi

rest() {
    nice -n 19 ionice -c 2 -n 7 "$py" -m pytest -m "qemu and not timing and not nfs" -v \
        "${xdist[@]}" --durations=10 "$@" 2>&1 | sed -u 's/^/[rest]  /'
    return "${PIPESTATUS[0]}"
}
alone() {
    "$py" -m pytest -m "qemu and (timing or nfs)" -v --durations=10 "$@" 2>&1 \
        | sed -u 's/^/[alone] /'
    return "${PIPESTATUS[0]}"
}

start=$(date +%s)
if [ -n "${APART:-}" ]; then
    echo "kvmlab: integration tier: the rest in $workers workers, then timing and NFS tests alone"
    rest "$@"; a=$?
    alone "$@"; b=$?
else
    echo "kvmlab: integration tier: timing and NFS tests one at a time [alone], beside the" \
         "rest in $workers workers at the lowest priority [rest]"
    rest "$@" & p_rest=$!
    alone "$@" & p_alone=$!
    wait "$p_rest"; a=$?
    wait "$p_alone"; b=$?
fi
echo "kvmlab: integration tier took $(( $(date +%s) - start )) s ([rest] exit $a, [alone] exit $b)"
if [ -n "$subset" ] && [ "$a" = 5 ] && [ "$b" != 5 ]; then a=0; fi
if [ -n "$subset" ] && [ "$b" = 5 ] && [ "$a" != 5 ]; then b=0; fi
[ "$a" != 0 ] && exit "$a"
exit "$b"
