#!/usr/bin/env bash
# A real one-node SLURM cluster (Debian's slurm-wlm 22.05 + munge + slurmdbd/MariaDB) for rt_lab's SLURM tests
# (tests/test_slurm.py). Run as root:
#   .ci/slurm-cluster.sh install   # apt packages; skipped when they are already there
#   .ci/slurm-cluster.sh start     # writes the config under $RT_LAB_SLURM_DIR and starts the daemons
#   eval "$(.ci/slurm-cluster.sh env)"   # SLURM_CONF for sbatch/squeue/sacct and the tests
#   .ci/slurm-cluster.sh stop      # stops exactly the processes 'start' started (by their recorded PIDs)
# One partition `debug` with this machine's CPUs and 85% of its memory, no GPUs (launcher settings that fit:
# partition=debug gpus_per_node=0 tasks_per_node=1 cpus_per_task=1 mem_gb=1).
# The accounting DB stays on: submitit watches jobs with sacct and without it can wait forever on a dead job.
set -euo pipefail
D=${RT_LAB_SLURM_DIR:-/tmp/rt_lab-slurm}
CONF=$D/slurm.conf
RUN=$D/run
export SLURM_CONF=$CONF

install_packages() {
  local missing="" cmd
  for cmd in slurmctld slurmd sbatch sacct slurmdbd munged mariadbd; do command -v "$cmd" >/dev/null || missing=1; done
  if [ -z "$missing" ]; then echo "slurm-cluster: packages already installed"; return 0; fi
  export DEBIAN_FRONTEND=noninteractive
  # no init system in CI: keep the packages' postinst scripts from starting daemons (we start ours by PID)
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server
  [ -z "$guard" ] || rm -f /usr/sbin/policy-rc.d
}

write_conf() {
  mkdir -p "$D"/{state,spool,log} "$RUN"
  local node cpus mem
  node=$(hostname -s); cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
  cat >"$CONF" <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job (preemption) starts again only after its credential expired (default 120 s)
AuthInfo=cred_expire=10
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# schedule every 1-2 s instead of every minute: requeued and newly submitted jobs start at once
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# refuse (instead of pending forever) jobs asking for more CPUs/memory/GPUs than the node has
EnforcePartLimits=ALL
KillWait=5
# finished jobs stay visible to squeue/scontrol for 10 minutes
MinJobAge=600
MailProg=/bin/true
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # slurmdbd reads slurmdbd.conf next to $SLURM_CONF; it must be 0600 and owned by SlurmUser
  cat >"$D/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=rt_lab-ci
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$D/slurmdbd.conf"
}

wait_for() {  # wait_for <seconds> <cmd...>
  local n=$(( $1 * 5 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

spawn() {  # spawn <name> <cmd...>: a foreground daemon in its own session, its PID in $RUN/<name>.bgpid
  local name=$1; shift
  setsid "$@" >"$D/log/$name.stdout" 2>&1 </dev/null &
  echo $! >"$RUN/$name.bgpid"
}

start() {
  if [ -f "$RUN/slurmctld.bgpid" ] && kill -0 "$(cat "$RUN/slurmctld.bgpid")" 2>/dev/null; then
    echo "slurm-cluster: already running ($D)"; sinfo; return 0
  fi
  write_conf
  # munge: a daemon already answering (another cluster on this machine) is used, not replaced
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key; }
    spawn munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
    wait_for 10 sh -c 'munge -n | unmunge' || { cat "$D/log/munged.stdout" >&2; return 1; }
  fi
  # MariaDB for slurmdbd
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$D/log/mariadb-install.log" 2>&1
  spawn mariadb /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --innodb-buffer-pool-size=64M
  wait_for 30 mariadb-admin ping || { tail -n 30 "$D/log/mariadb.stdout" >&2; return 1; }
  # /var/lib/mysql outlives the cluster while job ids restart at 1 with a fresh StateSaveLocation: start from an
  # empty accounting DB then, or sacct mixes old jobs into new ones with the same ids
  [ -e "$D/state/job_state" ] || mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'rt_lab-ci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  spawn slurmdbd slurmdbd -D
  wait_for 30 sacctmgr -n list cluster || { tail -n 30 "$D/log/slurmdbd.log" >&2; return 1; }
  sacctmgr -i add cluster ci >/dev/null 2>&1 || true
  # -D: foreground, so the recorded PIDs are the daemons themselves
  spawn slurmctld slurmctld -D -i
  spawn slurmd slurmd -D
  if wait_for 30 sh -c "sinfo -h -o %t | grep -qx idle"; then sinfo; return 0; fi
  echo "slurm-cluster: slurm did not come up" >&2; tail -n 50 "$D"/log/*.log >&2; return 1
}

stop_pid() {  # stop_pid <name>: TERM the recorded PID, wait up to 10 s, then KILL
  local f=$RUN/$1.bgpid p
  [ -f "$f" ] || return 0
  p=$(cat "$f")
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  rm -f "$f"
}

stop() {
  # jobs first (their steps are children of slurmd's slurmstepd processes), then the daemons in reverse order
  if [ -f "$RUN/slurmctld.bgpid" ]; then
    scancel --user=root >/dev/null 2>&1 || true
    wait_for 20 sh -c '[ -z "$(squeue -h -t R,CG,PD)" ]' || true
  fi
  for name in slurmd slurmctld slurmdbd mariadb munged; do stop_pid "$name"; done
  return 0
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 install|start|stop|env|status" >&2; exit 2 ;;
esac
