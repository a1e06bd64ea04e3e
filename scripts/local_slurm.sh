#!/usr/bin/env bash
# Single-node SLURM cluster with accounting (slurmdbd + MariaDB) on this machine, from Debian packages
# (Debian 12: slurm 22.05), for trying tunegrid's SLURM launch locally and in CI.
#
#   scripts/local_slurm.sh [start]   install what is missing, start every daemon, prove `srun` works
#   scripts/local_slurm.sh stop      stop the daemons this script started
#   scripts/local_slurm.sh status    print sinfo; exit 0 if the cluster answers, 1 otherwise
#
# Needs root (apt, daemons). Daemons are started directly, not through systemd, so it also works in
# containers without an init system. State, spool, logs, pid files and MariaDB's data live under
# ${TUNEGRID_SLURM_DIR:-/tmp/tunegrid-slurm}; only the configs go to /etc/slurm, where the client
# commands (sbatch, srun, sacct, ...) read them by default, so users' shells need no SLURM_CONF.
set -euo pipefail

DIR=${TUNEGRID_SLURM_DIR:-/tmp/tunegrid-slurm}
CLUSTER=${TUNEGRID_SLURM_CLUSTER:-ci}
DB_PORT=${TUNEGRID_SLURM_DB_PORT:-3307}   # our own MariaDB instance; not 3306, which a system one may hold
DB_NAME=slurm_acct_db
DB_USER=slurm
CONF_DIR=/etc/slurm
# The node is named after the host: slurmd finds its NodeName by matching the short host name (it would
# also fall back to a NodeName=localhost entry, but then job environments and sinfo show "localhost",
# not the host's name). NodeAddr=127.0.0.1 keeps all traffic on loopback whatever the name resolves to.
NODE=$(hostname -s)
LOG=$DIR/log
PACKAGES=(munge slurmctld slurmd slurmdbd slurm-client mariadb-server)

log() { echo "local_slurm: $*"; }
die() { echo "local_slurm: error: $*" >&2; exit 1; }

# wait_for SECONDS WHAT CMD...: poll CMD once a second until it succeeds; fail with WHAT after SECONDS.
wait_for() {
    local timeout=$1 what=$2 i
    shift 2
    for ((i = 0; i < timeout; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    die "timed out after ${timeout}s waiting for $what (logs: $LOG)"
}

# alive PIDFILE: the pid in PIDFILE is a live process of the daemon the file is named after (not a
# recycled pid, e.g. after a reboot that kept $DIR).
alive() {
    local pid name
    [[ -s $1 ]] || return 1
    pid=$(cat "$1") name=$(basename "$1" .pid)
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then return 0; fi
    log "installing ${missing[*]}"
    # Keep the packages' own service scripts from starting daemons with the stock configs (systemd hosts
    # included: deb-systemd-invoke honours policy-rc.d too); this script starts them itself.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local t0=$SECONDS rc=0
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${PACKAGES[@]}"; } || rc=$?
    if ((own_policy)); then rm -f "$policy"; fi
    ((rc == 0)) || die "apt-get failed ($rc)"
    # On a systemd host the packages enable their units; at the next boot those would start the
    # daemons with the stock paths and collide with the ones this script starts.
    # Only the units of packages installed just now: a MariaDB or munge the host already ran stays as is.
    if [[ -d /run/systemd/system ]]; then
        for p in "${missing[@]}"; do
            case $p in
                slurm-client) ;;
                mariadb-server) systemctl disable mariadb >/dev/null 2>&1 || true ;;
                *) systemctl disable "$p" >/dev/null 2>&1 || true ;;
            esac
        done
    fi
    log "installed in $((SECONDS - t0))s"
}

make_dirs() {
    install -d -m 755 "$DIR" "$DIR/spool"
    # slurmctld and slurmdbd chdir (as slurm) into their log folder; sticky so munged accepts it as well.
    install -d -m 1775 -g slurm "$LOG"
    install -d -m 755 -o slurm -g slurm "$DIR/state" "$DIR/slurm-run"
    install -d -m 750 -o mysql -g mysql "$DIR/mysql"
    install -d -m 755 -o mysql -g mysql "$DIR/mysql-run"
    install -d -m 700 -o munge -g munge "$DIR/munge"
    local f
    # Log files exist beforehand, owned by the user each daemon runs as (all but slurmd drop root).
    for f in slurmctld slurmdbd; do [[ -e $LOG/$f.log ]] || install -m 644 -o slurm -g slurm /dev/null "$LOG/$f.log"; done
    [[ -e $LOG/mariadb.log ]] || install -m 644 -o mysql -g mysql /dev/null "$LOG/mariadb.log"
    [[ -e $LOG/munged.log ]] || install -m 644 -o munge -g munge /dev/null "$LOG/munged.log"
    [[ -e $LOG/slurmd.log ]] || install -m 644 /dev/null "$LOG/slurmd.log"
}

# ---- MariaDB: a private instance (own datadir, socket, port) so a system MySQL is never touched ----
SOCK=$DIR/mysql-run/mysqld.sock
sql() { mariadb --no-defaults --socket="$SOCK" -uroot "$@"; }

start_mariadb() {
    if ! alive "$DIR/mysql-run/mariadbd.pid"; then
        if [[ ! -d $DIR/mysql/mysql ]]; then
            log "initialising MariaDB in $DIR/mysql"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql" --skip-test-db \
                >>"$LOG/mariadb.log" 2>&1 || die "mariadb-install-db failed (see $LOG/mariadb.log)"
        fi
        log "starting MariaDB on 127.0.0.1:$DB_PORT"
        # No native AIO: it is missing in some sandboxes (gVisor) and buys nothing for a tiny accounting DB.
        setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" --socket="$SOCK" \
            --pid-file="$DIR/mysql-run/mariadbd.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --skip-name-resolve --innodb-use-native-aio=0 --log-error="$LOG/mariadb.log" \
            --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOG/mariadb.log" 2>&1 &
        wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$SOCK" -uroot ping
    fi
    # Idempotent: the same password every time (kept in $DIR), whatever state the DB was left in.
    local pass_file=$DIR/db.pass
    [[ -s $pass_file ]] || (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$pass_file")
    DB_PASS=$(cat "$pass_file")
    local h
    for h in localhost 127.0.0.1; do
        sql -e "CREATE USER IF NOT EXISTS '$DB_USER'@'$h' IDENTIFIED BY '$DB_PASS';
                ALTER USER '$DB_USER'@'$h' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'$h';"
    done
    sql -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;"
}

# ---- munge: slurm's authentication; one key shared by every daemon and client on the host ----
munge_works() { { munge -n </dev/null | unmunge; } >/dev/null 2>&1; }

start_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "creating $key"
        mungekey --create --keyfile="$key" 2>/dev/null || dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$key" && chmod 400 "$key"
    if munge_works; then return 0; fi   # ours from an earlier run, or the host's own munged
    log "starting munged"
    # munged insists on its socket dir being owned by munge, and the clients look there by default.
    install -d -m 755 -o munge -g munge /run/munge
    runuser -u munge -- munged --pid-file="$DIR/munge/munged.pid" --log-file="$LOG/munged.log" \
        --seed-file="$DIR/munge/munged.seed" || die "munged failed (see $LOG/munged.log)"
    wait_for 20 munged munge_works
}

# ---- configs ----
# write_if_changed FILE MODE OWNER: stdin to FILE; return 0 if FILE changed.
write_if_changed() {
    local file=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chown "$owner" "$file" && chmod "$mode" "$file"
        return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

write_configs() {
    install -d -m 755 "$CONF_DIR"
    local cpus mem_mb real_mb
    cpus=$(nproc)
    # RealMemory a little below the total (95%): slurmd drains a node that reports less memory than
    # configured, and jobs asking --mem above it would never be scheduled.
    mem_mb=$(free -m | awk '/^Mem:/ {print $2}')
    real_mb=$((mem_mb * 95 / 100))
    CHANGED=0
    write_if_changed "$CONF_DIR/slurmdbd.conf" 600 slurm:slurm <<EOF && CHANGED=1 || true
# Written by scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=$DIR/slurm-run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
    write_if_changed "$CONF_DIR/slurm.conf" 644 root:root <<EOF && CHANGED=1 || true
# Written by scripts/local_slurm.sh: a one-node cluster with accounting through slurmdbd.
ClusterName=$CLUSTER
SlurmctldHost=localhost
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120); 10 is ample for
# launches on one local node.
AuthInfo=cred_expire=10
SlurmUser=slurm
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurm-run/slurmctld.pid
SlurmdPidFile=$DIR/slurm-run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups: plain /proc process tracking works in containers too.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MailProg=/bin/true
# Look at pending jobs every 2 s (default 60; backfill every 30): a requeued job, eligible again after
# cred_expire, starts within seconds rather than up to a minute later. Cheap with one node.
SchedulerParameters=sched_interval=2,bf_interval=5
# Requeue allowed by default; finished jobs stay in squeue/scontrol 5 minutes; signal-then-kill in 5 s.
JobRequeue=1
MinJobAge=300
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# ---- slurm daemons ----
start_slurmdbd() {
    if ! alive "$DIR/slurm-run/slurmdbd.pid"; then
        log "starting slurmdbd"
        slurmdbd || die "slurmdbd failed (see $LOG/slurmdbd.log)"
    fi
    # First start creates the tables, which takes a few seconds.
    wait_for 90 "slurmdbd to answer" sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        log "registering cluster $CLUSTER"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

start_slurmctld() {
    if ! alive "$DIR/slurm-run/slurmctld.pid"; then
        log "starting slurmctld"
        slurmctld || die "slurmctld failed (see $LOG/slurmctld.log)"
    fi
    wait_for 60 slurmctld ctld_up
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null; }
node_idle() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurmd() {
    if ! alive "$DIR/slurm-run/slurmd.pid"; then
        log "starting slurmd"
        slurmd || die "slurmd failed (see $LOG/slurmd.log)"
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        node_idle && return 0
        # A node drained or down from an earlier run (e.g. killed slurmd) comes back once slurmd answers.
        if ((i == 10)) && [[ $(node_state) =~ drain|down ]]; then
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        fi
        sleep 1
    done
    sinfo -N -l >&2 || true
    die "node $NODE did not become idle (logs: $LOG)"
}

# stop_pid NAME PIDFILE: TERM, then KILL after 20 s.
stop_pid() {
    local name=$1 pidfile=$2 pid i
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    log "stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

stop_slurm_daemons() {
    stop_pid slurmd "$DIR/slurm-run/slurmd.pid"
    stop_pid slurmctld "$DIR/slurm-run/slurmctld.pid"
    stop_pid slurmdbd "$DIR/slurm-run/slurmdbd.pid"
}

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts and stops daemons)"; }

cmd_start() {
    need_root
    local t0=$SECONDS
    install_packages
    make_dirs
    start_mariadb
    start_munge
    write_configs
    if ((CHANGED)); then   # running jobs survive: slurmstepd outlives slurmd, slurmctld reloads its state
        log "wrote $CONF_DIR/slurm.conf and slurmdbd.conf"
        stop_slurm_daemons
    fi
    start_slurmdbd
    start_slurmctld
    start_slurmd
    local ran
    if [[ $(node_state) == allocated ]]; then
        # Every CPU is taken by users' jobs: an srun would only queue behind them.
        ran="srun check skipped: node fully allocated"
    else
        ran=$(timeout 60 srun -N1 -t 1 hostname 2>&1) || die "srun -N1 hostname failed: $ran"
        ran="srun ran on $ran"
    fi
    log "local SLURM ready: cluster=$CLUSTER node=$NODE ($ran) cpus=$(nproc) partition=debug" \
        "accounting=slurmdbd dir=$DIR ($((SECONDS - t0))s)"
}

cmd_stop() {
    need_root
    stop_slurm_daemons
    stop_pid munged "$DIR/munge/munged.pid"
    stop_pid MariaDB "$DIR/mysql-run/mariadbd.pid"
}

cmd_status() {
    if timeout 10 sinfo 2>/dev/null && ctld_up; then exit 0; fi
    echo "local_slurm: the cluster does not answer" >&2
    exit 1
}

case ${1:-start} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
