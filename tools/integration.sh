#!/usr/bin/env bash
# The integration tier (make integration): two pytest sessions, one after the other
# (APART=1, what make integration does) or side by side (APART empty).
#
#   [alone] tests whose verdict rests on timing (marked `timing`: a stall, a rate, an outage
#           window, the predictor, the panel's refresh) at normal priority; side by side also
#           the tests of the host's one NFS server (marked `nfs`), which apart run in [rest],
#           in one worker.  Apart, ALONE_WORKERS (default 2) of them at a time, and after
#           them, one at a time [solo], those also marked `solo`: their verdict rests on how
#           fast the guest's TCG vCPU writes, against a limit (beside a second timing test
#           the guest's rate fell below the copy's);
#   [rest]  every other integration test in WORKERS pytest-xdist workers; side by side at
#           idle CPU priority: they take only the CPU the [alone] tests leave (those use
#           about a third of the 2 cores; the rest are bound by the CPU their TCG guests need).
#
# Side by side: beside a second TCG guest at the same priority a timing verdict flips now and then.  So
# [rest] runs in a cpu cgroup of its own marked cpu.idle (its processes and all they start,
# whatever session they open: nice alone would not do, since the kernel's autogroups give
# each new session, such as every Jupyter kernel, its own full share), and libvirt's
# `machine` cgroup, where libvirtd puts its domains' QEMUs, is marked idle for the run too
# (restored after).  Without a writable cgroup (not root), [rest] runs at nice 19.
#
# usage: tools/integration.sh PYTHON WORKERS [pytest args...]
#   WORKERS=0: [rest] in one process.  APART=1: [alone] after [rest], not beside it (what
#   make integration does unless told otherwise: beside [rest], even in its idle cgroup, a
#   timing verdict still flips now and then, so side by side is for a quicker local run).
#   With pytest args choosing a subset, a session they leave empty (pytest's exit 5) is
#   fine; the whole tier must run tests in both.
#   At the end, every session's FAILED and ERROR summary lines again, under "kvmlab: what
#   failed:" (a CI log shows only its tail).
set -uo pipefail
py=$1 workers=$2
shift 2
subset=$([ $# -gt 0 ] && echo yes || true)
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadgroup)

# [rest]'s idle cgroup (v1's cpu hierarchy or v2's), and libvirt's machine cgroup marked idle
cgroup=
machine_idle=
# each session's output, kept to repeat what failed at the end (CI shows only the tail)
summary=$(mktemp -t kvmlab-integration.XXXXXX) || exit 2
cleanup() {
    rm -f "$summary"
    if [ -n "$cgroup" ]; then
        # (the leak checks stop what tests leave; anything else goes back to the root)
        while read -r pid; do echo "$pid" > "${cgroup%/*}/cgroup.procs"; done \
            < "$cgroup/cgroup.procs" 2>/dev/null
        rmdir "$cgroup" 2>/dev/null
    fi
    [ -n "$machine_idle" ] && echo 0 > "$machine_idle" 2>/dev/null
    return 0
}
trap cleanup EXIT
trap 'trap - TERM; kill -TERM 0' TERM
machine_cgroups() { echo "$1/machine/cpu.idle" "$1/machine.slice/cpu.idle"; }
if [ -z "${APART:-}" ]; then
    for base in /sys/fs/cgroup/cpu /sys/fs/cgroup; do
        [ -w "$base/cgroup.procs" ] || continue
        # a run killed before its cleanup left its cgroup (named kvmlab-rest-PID, with -m
        # when it marked libvirt's idle): gone once its processes are, libvirt's set back
        for stale in "$base"/kvmlab-rest-*; do
            pid=${stale##*/kvmlab-rest-}
            [ -d "$stale" ] && ! kill -0 "${pid%-m}" 2>/dev/null && rmdir "$stale" 2>/dev/null \
                && case "$pid" in *-m) for m in $(machine_cgroups "$base"); do
                       [ -w "$m" ] && echo 0 > "$m"; done;; esac
        done
        mkdir "$base/kvmlab-rest-$$" 2>/dev/null || continue
        if echo 1 > "$base/kvmlab-rest-$$/cpu.idle" 2>/dev/null; then
            cgroup=$base/kvmlab-rest-$$
            for m in $(machine_cgroups "$base"); do
                if [ -w "$m" ] && [ "$(cat "$m")" = 0 ] && mv "$cgroup" "$cgroup-m" \
                        && cgroup=$cgroup-m && echo 1 > "$m" 2>/dev/null; then
                    machine_idle=$m
                    break
                fi
            done
            break
        fi
        rmdir "$base/kvmlab-rest-$$"
    done
fi

# side by side, [rest] also at the lowest nice and I/O priority (alone on the host: as is)
lowered=()
[ -z "${APART:-}" ] && lowered=(nice -n 19 ionice -c 2 -n 7)
# apart, the NFS tests that are not timing tests run in [rest] too (in one worker, their
# xdist group: tests/conftest.py); side by side they stay in [alone], away from [rest]'s
rest_m="qemu and not timing and not nfs" alone_m="qemu and (timing or nfs)"
[ -n "${APART:-}" ] && rest_m="qemu and not timing" alone_m="qemu and timing and not solo"
rest() {
    [ -n "$cgroup" ] && echo "$BASHPID" > "$cgroup/cgroup.procs"
    "${lowered[@]}" "$py" -m pytest -m "$rest_m" -v \
        "${xdist[@]}" --durations=10 "$@" 2>&1 | sed -u 's/^/[rest]  /' | tee -a "$summary"
    return "${PIPESTATUS[0]}"
}
# apart, [alone]'s timing tests ALONE_WORKERS at a time (each uses about a third of the
# 2 cores, so two leave room; the NFS ones stay in one worker, their group); side by side,
# beside [rest], one at a time
alone_workers=1
if [ -n "${APART:-}" ]; then
    alone_workers=${ALONE_WORKERS:-2}
    case "$alone_workers" in
        [1-9]) ;;
        *) echo "kvmlab: ALONE_WORKERS=$alone_workers must be 1 to 9" >&2; exit 2;;
    esac
fi
alone_xdist=()
[ "$alone_workers" -gt 1 ] && alone_xdist=(-n "$alone_workers" --dist loadgroup)
alone() {
    "$py" -m pytest -m "$alone_m" -v "${alone_xdist[@]}" --durations=10 "$@" 2>&1 \
        | sed -u 's/^/[alone] /' | tee -a "$summary"
    return "${PIPESTATUS[0]}"
}
solo() {
    "$py" -m pytest -m "qemu and solo" -v --durations=10 "$@" 2>&1 \
        | sed -u 's/^/[solo]  /' | tee -a "$summary"
    return "${PIPESTATUS[0]}"
}

start=$(date +%s)
if [ -n "${APART:-}" ]; then
    echo "kvmlab: integration tier: the rest in $workers workers, then timing tests" \
         "$alone_workers at a time, then the solo ones alone"
    rest "$@"; a=$?
    alone "$@"; b=$?
    solo "$@"; c=$?
    # [solo] is [alone]'s second half: a failure in either is [alone]'s, and [alone] ran
    # no test only if neither did
    if [ "$b" = 5 ]; then b=$c
    elif [ "$b" = 0 ] && [ "$c" != 5 ]; then b=$c
    fi
else
    how="nice 19 (no writable cpu cgroup)"
    [ -n "$cgroup" ] && how="idle CPU priority (cgroup $cgroup)"
    echo "kvmlab: integration tier: timing and NFS tests one at a time [alone], beside the" \
         "rest in $workers workers at $how [rest]"
    rest "$@" & p_rest=$!
    alone "$@" & p_alone=$!
    wait "$p_rest"; a=$?
    wait "$p_alone"; b=$?
fi
echo "kvmlab: integration tier took $(( $(date +%s) - start )) s ([rest] exit $a, [alone]" \
     "exit $b${c:+, [solo] exit $c})"
# what failed, again at the end: the sessions' own summaries scroll out of a log's tail
failed=$(grep -E '^\[(rest|alone|solo)\] +(FAILED|ERROR) ' "$summary" | cut -c1-300)
[ -n "$failed" ] && printf 'kvmlab: what failed:\n%s\n' "$failed"
if [ -n "$subset" ] && [ "$a" = 5 ] && [ "$b" != 5 ]; then a=0; fi
if [ -n "$subset" ] && [ "$b" = 5 ] && [ "$a" != 5 ]; then b=0; fi
[ "$a" != 0 ] && exit "$a"
exit "$b"
