#!/bin/bash
# netns-cluster.sh: a pretend N-host cluster on one Linux machine (network namespaces on a bridge), for real
# multi-host mpirun runs in CI. Root, iproute2, util-linux and OpenMPI (mpirun) needed.
#
#   netns-cluster.sh up N                    hosts zlh1..zlhN = namespaces, 10.200.0.1..N/24 on eth0, each with a
#                                            veth into bridge br0 of namespace zlsw (the "switch"); names in
#                                            /etc/netns/zlhI/hosts. The root namespace gets no interface or route.
#   netns-cluster.sh run N -- MPIRUN-ARGS    mpirun from zlh1 over zlh1..zlhN (1 slot each), launched through
#                                            netns-rsh (an ssh look-alike), MPI and OOB traffic on TCP over eth0,
#                                            --bind-to none (every "host" sees all cores: default binding would
#                                            pin each host's rank 0 to the same core)
#   netns-cluster.sh exec I CMD...           run CMD on host I (e.g. ip -s link show eth0)
#   netns-cluster.sh unplug I | plug I       take host I's switch port down / up (a pulled cable)
#   netns-cluster.sh down                    kill whatever still runs in these namespaces, delete them (idempotent)
#
# Everything else is shared, as on a cluster with a shared filesystem: same files, same /tmp and /dev/shm, same
# PIDs visible. Environment: NETNS_CLUSTER_PREFIX (default zl), NETNS_CLUSTER_NET (default 10.200.0, a /24 used
# only inside these namespaces), NETNS_CLUSTER_TCP_RETRIES2 (up: net.ipv4.tcp_retries2 inside the hosts; 5 lets
# mpirun give up on a host behind a pulled cable in ~15 s instead of ~15 min).
# (The project's copy of ../shared/tools/netns-cluster.sh, so a clone runs tests/multihost/run.sh without
# ../shared's tools; its netns-rsh is scripts/netns-rsh. docs/CLUSTER.md: what this teaches about real clusters.)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
P=${NETNS_CLUSTER_PREFIX:-zl}
NET=${NETNS_CLUSTER_NET:-10.200.0}
export NETNS_CLUSTER_PREFIX=$P NETNS_CLUSTER_NET=$NET
SW=${P}sw

die() { echo "netns-cluster.sh: $*" >&2; exit 2; }
ours() { ip netns list | awk '{print $1}' | grep -E "^${P}(h[0-9]+|sw)\$" || true; }

down() {
    local ns pids
    for ns in $(ours); do
        pids=$(ip netns pids "$ns" | tr '\n' ' ')       # only processes started in our namespaces
        if [ -n "${pids// }" ]; then kill -TERM $pids 2>/dev/null || true; sleep 1
            pids=$(ip netns pids "$ns" | tr '\n' ' '); [ -z "${pids// }" ] || kill -KILL $pids 2>/dev/null || true
        fi
        ip netns del "$ns"
    done
    rm -rf /etc/netns/"$P"h[0-9]* /tmp/ompi."$P"h[0-9]*.*    # hosts files; session dirs left by killed runs
    rmdir /etc/netns 2>/dev/null || true
}

up() {
    local n=$1 i j h out
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 250 ] || die "up N: N in 1..250"
    down
    ip netns add "$SW"
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up
    for i in $(seq 1 "$n"); do
        h=${P}h$i
        ip netns add "$h"
        ip -n "$SW" link add "port$i" type veth peer name eth0 netns "$h"
        ip -n "$SW" link set "port$i" master br0 up
        ip -n "$h" addr add "$NET.$i/24" dev eth0
        ip -n "$h" link set eth0 up
        ip -n "$h" link set lo up
        # optional: give up on an unacknowledged TCP send sooner than the kernel's ~15 min (per namespace)
        [ -z "${NETNS_CLUSTER_TCP_RETRIES2:-}" ] || ip netns exec "$h" sysctl -qw net.ipv4.tcp_retries2="$NETNS_CLUSTER_TCP_RETRIES2"
        mkdir -p "/etc/netns/$h"              # ip netns exec bind-mounts it over /etc/hosts
        { echo "127.0.0.1 localhost"; for j in $(seq 1 "$n"); do echo "$NET.$j ${P}h$j"; done; } \
            > "/etc/netns/$h/hosts"
    done
    # reachability without ping: a "connection refused" from host 1's closed port 9 means it answered
    for j in $(seq 1 20); do
        out=$(ip netns exec "${P}h$n" timeout 2 bash -c "</dev/tcp/$NET.1/9" 2>&1 || true)
        [[ $out == *refused* ]] && break
        [ "$j" -lt 20 ] || die "host ${P}h$n cannot reach $NET.1"; sleep 0.5
    done
    echo "up: $(seq -s ' ' -f "${P}h%g" 1 "$n") on $NET.0/24 (switch: $SW/br0)"
}

run() {
    local n=$1; shift; [ "${1:-}" = -- ] && shift
    [ -e "/run/netns/${P}h$n" ] || die "no host ${P}h$n: run 'up $n' first"
    exec ip netns exec "${P}h1" unshare --uts sh -c 'hostname "$0" && exec "$@"' "${P}h1" \
        mpirun --allow-run-as-root --host "$(seq -s, -f "${P}h%g:1" 1 "$n")" \
            --mca plm_rsh_agent "$here/netns-rsh" \
            --bind-to none --mca pml ob1 --mca btl tcp,self \
            --mca btl_tcp_if_include "$NET.0/24" --mca oob_tcp_if_include "$NET.0/24" \
            "$@"
}

cmd=${1:-}; shift || true
case $cmd in
    up) up "${1:?up N}" ;;
    down) down ;;
    run) run "${1:?run N -- MPIRUN-ARGS}" "${@:2}" ;;
    exec) i=${1:?exec I CMD}; shift; exec ip netns exec "${P}h$i" "$@" ;;
    unplug) ip -n "$SW" link set "port${1:?unplug I}" down ;;
    plug) ip -n "$SW" link set "port${1:?plug I}" up ;;
    *) sed -n '2,24s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
