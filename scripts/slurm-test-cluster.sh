#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the tests marked `slurm` (and for trying
# `--executor slurm` by hand). Nothing here runs unless you ask for it:
#
#   bash scripts/slurm-test-cluster.sh install   # Debian's slurmctld slurmd slurm-client munge (root, ~13 MB)
#   eval "$(bash scripts/slurm-test-cluster.sh start)"   # start it (idempotent); prints `export SLURM_CONF=...`
#   bash scripts/slurm-test-cluster.sh stop      # stop its daemons (by the pids in their pid files)
#   bash scripts/slurm-test-cluster.sh env       # print the export line of a running cluster
#
# Everything (config, munge key and socket, state, spool, pids, logs) lives in one folder,
# $DTVG_SLURM_TEST_DIR (default /tmp/dtvg-slurm), and the daemons listen on 127.0.0.1 only, on ports
# $DTVG_SLURM_PORT and the one after it (default 16817, 16818), so a real Slurm on the machine is left
# alone. Runs as root without systemd: munged as the `munge` user, slurmctld and slurmd as root.
set -euo pipefail

DIR="${DTVG_SLURM_TEST_DIR:-/tmp/dtvg-slurm}"
PORT="${DTVG_SLURM_PORT:-16817}"
CONF="$DIR/slurm.conf"
MUNGE="$DIR/munge"
SOCKET="$MUNGE/munge.socket.2"

die() { echo "slurm-test-cluster: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "installing needs root: sudo apt-get install --no-install-recommends slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || die "no apt-get here; install slurmctld, slurmd, slurm-client and munge yourself"
    apt-get update -qq
    # policy-rc.d would otherwise let the packages' postinst try to start their services
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

alive() {  # alive PIDFILE: the pid in it is a running process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

running() {
    alive "$MUNGE/munged.pid" && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" \
        && SLURM_CONF="$CONF" scontrol ping >/dev/null 2>&1
}

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
    cat >"$CONF" <<EOF
# Written by scripts/slurm-test-cluster.sh: a single-node test cluster on 127.0.0.1.
ClusterName=dtvgtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$SOCKET,cred_expire=5
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=10
# schedule every second (default: a minute), so a requeued job starts again at once
SchedulerParameters=sched_interval=1,bf_interval=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if running; then
        echo "export SLURM_CONF=$CONF"
        return
    fi
    stop >/dev/null 2>&1 || true
    command -v slurmctld >/dev/null || die "Slurm is not installed; run: bash scripts/slurm-test-cluster.sh install"
    [ "$(id -u)" = 0 ] || die "the test cluster runs its daemons as root; run this as root"
    rm -rf "$DIR/state" "$DIR/spool"  # a fresh cluster: no jobs of an earlier one come back
    mkdir -p "$DIR/state" "$DIR/spool" "$MUNGE"
    chmod 0755 "$DIR"
    chown munge:munge "$MUNGE"
    chmod 0755 "$MUNGE"  # traversable: clients reach the socket inside it
    if [ ! -s "$MUNGE/munge.key" ]; then
        dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE/munge.key"
    chmod 0600 "$MUNGE/munge.key"
    write_conf
    # 9>&-: the daemons must not inherit the lock of `locked`, or they would hold it for ever and every
    # later start, stop or test fixture would wait on it
    runuser -u munge -- munged --socket="$SOCKET" --key-file="$MUNGE/munge.key" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed" 9>&-
    slurmctld -f "$CONF" 9>&-
    slurmd -f "$CONF" 9>&-
    # the node registers and turns idle in about a second
    for _ in $(seq 1 60); do
        if SLURM_CONF="$CONF" sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.5
    done
    die "the node did not turn idle in 30 s; see $DIR/slurmctld.log and $DIR/slurmd.log"
}

stop() {
    local pidfile pid
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$MUNGE/munged.pid"; do
        if alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

locked() {  # two test processes starting the cluster at once: one starts it, the other finds it running
    exec 9>"$DIR.lock"
    flock 9
    "$@"
}

case "${1:-}" in
    install) install ;;
    start) locked start ;;
    stop) locked stop ;;
    env) running && echo "export SLURM_CONF=$CONF" || die "no test cluster is running in $DIR" ;;
    *) die "usage: $0 install|start|stop|env" ;;
esac
