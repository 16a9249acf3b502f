#!/usr/bin/env bash
# A real multi-node Ray cluster on one machine: a head node and N worker nodes, each started with
# `ray start`, each with its own CPUs, object store and a custom resource naming it. Jobs submitted
# to it (`ray job submit --address http://127.0.0.1:8265`) see several nodes exactly as on a cloud
# cluster, so it is where jobs, fault tolerance and scaling are tried before paying for one.
#
#   cluster/local.sh start [N]      head + N worker nodes (default 2); waits until all are up
#   cluster/local.sh status         the nodes this script started and `ray status`
#   cluster/local.sh kill-worker I  SIGKILL worker node I (1..N) and everything it runs: a node crash
#   cluster/local.sh add-worker     start one more worker node (as an autoscaler would)
#   cluster/local.sh stop           stop every node this script started (only those)
#
# Every node runs in its own process group, recorded under $SEMRAY_CLUSTER_DIR, so `stop` and
# `kill-worker` touch only this cluster: unlike `ray stop`, they leave any other Ray on the machine
# (a notebook's, a test's) alone.
#
# Settings (environment): SEMRAY_CLUSTER_DIR (pids and `ray start` output, default
# /tmp/semray-cluster; each node's Ray logs are under /tmp/semray-ray-PORT/NODE/session_latest/logs),
# SEMRAY_CLUSTER_PORT (GCS port, default 6390), SEMRAY_DASHBOARD_PORT (job API, default 8265),
# SEMRAY_HEAD_CPUS (default 0: the head only coordinates, as on a cloud cluster with a small head),
# SEMRAY_WORKER_CPUS (default 1), SEMRAY_WORKER_GPUS (default 0), SEMRAY_OBJECT_STORE_MB (per node,
# default 512), RAY (the ray executable, default: the one next to this repo's .venv python, else PATH).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
DIR=${SEMRAY_CLUSTER_DIR:-/tmp/semray-cluster}
PORT=${SEMRAY_CLUSTER_PORT:-6390}
DASH=${SEMRAY_DASHBOARD_PORT:-8265}
HEAD_CPUS=${SEMRAY_HEAD_CPUS:-0}
WORKER_CPUS=${SEMRAY_WORKER_CPUS:-1}
WORKER_GPUS=${SEMRAY_WORKER_GPUS:-0}
STORE=$(( ${SEMRAY_OBJECT_STORE_MB:-512} * 1024 * 1024 ))
RAY_TMP=/tmp/semray-ray-$PORT
if [ -z "${RAY:-}" ]; then
  if [ -x "$here/.venv/bin/ray" ]; then RAY="$here/.venv/bin/ray"; else RAY=$(command -v ray); fi
fi
# Jobs run `python ...` on the nodes: make it the interpreter Ray (and semray) are installed in,
# as an activated virtualenv would.
export PATH="$(dirname "$RAY"):$PATH"
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
# Every node, the dashboard and the job API listen on 127.0.0.1 only: nothing outside this machine
# can reach the cluster, which is why Ray's token authentication (on by default for local clusters
# since Ray 2.59) is turned off here unless you turn it on: clients then need no token. Export
# RAY_AUTH_MODE=token to try jobs with authentication. Cloud clusters keep it on (cluster/*.yaml).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
# Ray kills idle worker processes beyond a node's CPUs after a second; on 1-CPU nodes (and the 0-CPU
# head) every short zero-CPU task of a scoring job (its reads and writes) then starts a new Python
# process. Keeping 4 idle per node took the cluster tests from 73 such processes to 26 and 380 to
# 290 CPU-seconds (bench/RESULTS.md, "Test suite").
export RAY_num_workers_soft_limit=${RAY_num_workers_soft_limit:-4}
# A node that dies is known to the others after 5 missed health checks: one a second here (Ray's
# default is one every 3 s, for nodes across a network), so work a killed node held is re-run
# about 10 s sooner. The check still waits Ray's default 10 s for a busy, living node to answer.
export RAY_health_check_period_ms=${RAY_health_check_period_ms:-1000}

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Each node gets its own block of ports: several raylets on one machine must not share any.
node_ports() {  # $1 = node index (0 = head)
  local base=$(( 20000 + PORT % 1000 * 10 + $1 * 100 ))
  echo "--node-manager-port=$base --object-manager-port=$((base + 1)) \
--dashboard-agent-listen-port=$((base + 2)) --dashboard-agent-grpc-port=$((base + 3)) \
--runtime-env-agent-port=$((base + 4)) --metrics-export-port=$((base + 5)) \
--min-worker-port=$((base + 10)) --max-worker-port=$((base + 99))"
}

launch() {  # $1 = node name, rest = ray start arguments; the node runs in its own process group
  local name=$1; shift
  # Each node keeps its own Ray temp dir (sessions, logs, sockets), as separate machines would;
  # sharing one, every node's log monitor would forward every worker's output: each line N times.
  # Short paths: Ray's Unix sockets live there and their names are limited to ~100 characters.
  local tmp="$RAY_TMP/$name"
  mkdir -p "$tmp"
  # setsid: the node (ray start --block, its raylet, agents and workers) is one process group.
  setsid "$RAY" start --block --disable-usage-stats --node-ip-address=127.0.0.1 --temp-dir="$tmp" "$@" \
    >"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_nodes() {  # $1 = number of nodes expected alive, $2 = the node just launched
  local want=$1 n=0
  # `ray start` logs "Ray runtime started." once its raylet has registered: wait for that first, at a
  # grep a fifth of a second, before asking Ray (each `ray list nodes` is a Python process that
  # imports Ray, about a CPU-second).
  if [ -n "${2:-}" ]; then
    for _ in $(seq 1 600); do
      grep -q "Ray runtime started" "$DIR/$2.log" 2>/dev/null && break
      alive "$DIR/$2.pid" || break
      sleep 0.2
    done
  fi
  for _ in $(seq 1 120); do
    n=$("$RAY" list nodes --address "127.0.0.1:$PORT" --filter "state=ALIVE" --limit 1000 2>/dev/null \
        | grep -c "ALIVE" || true)
    [ "$n" -ge "$want" ] && return 0
    sleep 1
  done
  echo "local.sh: only $n of $want node(s) came up; logs in $DIR" >&2
  return 1
}

workers() { ls "$DIR"/worker-*.pid 2>/dev/null | wc -l; }

start_worker() {  # $1 = index
  local i=$1
  launch "worker-$i" --address="127.0.0.1:$PORT" --num-cpus="$WORKER_CPUS" --num-gpus="$WORKER_GPUS" \
    --object-store-memory="$STORE" --resources="{\"worker_node_$i\": 1}" \
    --node-name="worker-$i" $(node_ports "$i")
}

cmd_start() {
  local n=${1:-2}
  if alive "$DIR/head.pid"; then echo "local.sh: already running (head pid $(cat "$DIR/head.pid"))" >&2; exit 1; fi
  rm -rf "$DIR" "$RAY_TMP"; mkdir -p "$DIR"
  launch head --head --port="$PORT" --num-cpus="$HEAD_CPUS" --num-gpus=0 --object-store-memory="$STORE" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH" \
    --ray-client-server-port=$(( PORT + 1 )) --node-name=head $(node_ports 0)
  wait_nodes 1 head || { cmd_stop; exit 1; }
  # One at a time: raylets sharing an IP address that start together can mistake each other's
  # registration and time out.
  for i in $(seq 1 "$n"); do start_worker "$i"; wait_nodes $(( i + 1 )) "worker-$i" || { cmd_stop; exit 1; }; done
  echo "local.sh: head + $n worker node(s) up; RAY_ADDRESS=127.0.0.1:$PORT, jobs: http://127.0.0.1:$DASH"
}

cmd_add_worker() {
  alive "$DIR/head.pid" || { echo "local.sh: not running" >&2; exit 1; }
  local i=$(( $(workers) + 1 ))
  start_worker "$i"
  wait_nodes $(( $(ls "$DIR"/*.pid | while read -r f; do alive "$f" && echo; done | wc -l) )) "worker-$i" || exit 1
  echo "local.sh: worker-$i up"
}

kill_group() {  # $1 = pid file, $2 = signal
  local pid; pid=$(cat "$1")
  kill "-$2" -- "-$pid" 2>/dev/null || true
}

descendants() {  # every process below the given pids
  local kids; kids=$(for p in "$@"; do pgrep -P "$p"; done || true)
  [ -n "$kids" ] && { echo $kids; descendants $kids; }
  return 0
}

cmd_kill_worker() {
  local f="$DIR/worker-${1:?worker index}.pid"
  alive "$f" || { echo "local.sh: worker-$1 is not running" >&2; exit 1; }
  # The raylet starts its workers (actors, tasks) in process groups of their own: find them as its
  # descendants, then kill the lot at once, as a machine losing power would.
  local group; group=$(pgrep -g "$(cat "$f")" || true)
  local all="$group $(descendants $group)"
  kill -KILL $all 2>/dev/null || true
  echo "local.sh: killed worker-$1 ($(echo $all | wc -w) processes)"
}

cmd_stop() {
  [ -d "$DIR" ] || { echo "local.sh: not running"; return 0; }
  local files; files=$(ls "$DIR"/worker-*.pid "$DIR"/head.pid 2>/dev/null || true)
  for f in $files; do kill_group "$f" TERM; done  # `ray start --block` stops its node on SIGTERM
  # ...but not promptly: its raylet exits in ~5 s, while its GCS, autoscaler monitor and runtime-env
  # agents were still up after 10 s (Ray 2.60). Nothing they would still do matters to a cluster
  # that goes away whole (its temp dir is cleared at the next start), so 3 s, then SIGKILL.
  for _ in $(seq 1 6); do
    local left=0
    for f in $files; do pgrep -g "$(cat "$f")" >/dev/null 2>&1 && left=1; done
    [ $left = 0 ] && break
    sleep 0.5
  done
  for f in $files; do kill_group "$f" KILL; rm -f "$f"; done
  echo "local.sh: stopped"
}

cmd_status() {
  [ -d "$DIR" ] || { echo "local.sh: not running"; return 1; }
  for f in "$DIR"/head.pid "$DIR"/worker-*.pid; do
    [ -f "$f" ] || continue
    local name; name=$(basename "$f" .pid)
    if alive "$f"; then echo "$name: running (process group $(cat "$f"))"; else echo "$name: dead"; fi
  done
  alive "$DIR/head.pid" || return 1
  "$RAY" status --address "127.0.0.1:$PORT"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  kill-worker) shift; cmd_kill_worker "$@" ;;
  add-worker) cmd_add_worker ;;
  *) usage ;;
esac
