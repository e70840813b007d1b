#!/usr/bin/env bash
# tests/e2e-hardening.sh — what a real Mac throws at connector (issue 10), against a
# real Docker engine, in the lab of tests/lab.sh: a full-tunnel VPN and a corporate
# route, a SIGTERM while the agent image is still being fetched, kind clusters that
# are still starting while networks come and go, hostile kind-labelled containers (absurd
# CIDRs, a YAML alias bomb), a container on an --internal network trying to reach the
# Mac, a daemon frozen for a minute (what a sleeping Mac looks like to it), a forged-
# handshake flood from the VM, and a local user flooding the control socket.
#
#   sudo tests/e2e-hardening.sh [CASE...]   (default: every case below, in order)
#
# Needs: target/debug/connector, images connector-agent:dev, connector-workload:dev and
# connector-kind-node:dev (scripts/setup builds them), a running dockerd, python3.
#
# Its own lab names, so it never collides with the other suites: prefix cnh<pid>, veth
# 10.234.0.0/30, networks 10.234.16.0/24 (A), 10.234.18.0/24 (internal), 10.234.130.0/24
# (inside the "corporate" route 10.234.128.0/17), 10.234.32-34.0/24 (created while
# running), tunnel 10.254.248.0/30, UDP port 51878, agent container connector-agent-hard
# (rule tag connector-agent-hard), test label io.connector.hardtest. The daemon runs with
# launchd's default soft limit of 256 open files (`prlimit --nofile=256`). Takes the lab
# lock (/run/connector-lab.lock).
#
# Environment: LAB_KEEP=1 keeps the logs, LAB_RESULTS_FILE=F writes "passed failed" to F,
# LAB_CONNECTOR / LAB_AGENT_IMAGE run another build (e.g. an older one, to see a case fail).
# The last line is "N passed, M failed"; the exit status is 0 only if M = 0.
set -uo pipefail

LAB_PREFIX=cnh$$
LAB_AGENT_NAME=connector-agent-hard
LAB_AGENT_TAG=$LAB_AGENT_NAME        # the agent tags its rules with its agent_name
LAB_LISTEN_PORT=51878
LAB_TUNNEL_CIDR=10.254.248.0/30
# shellcheck source=tests/lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

# lab.sh fixes these; this suite has its own.
LAB_VM_IP=10.234.0.1
LAB_MAC_IP=10.234.0.2
LAB_EMU_TAG=connector-hard-emulation
LAB_PROBE_TAG=connector-hard-probe
LAB_LABEL_KEY=io.connector.hardtest
LAB_LABEL="$LAB_LABEL_KEY=$LAB_PREFIX"
LAB_LOCK=${LAB_LOCK:-/run/connector-lab.lock}
# What launchd gives a daemon: 256 open files (soft).
LAB_DAEMON_WRAP=${LAB_DAEMON_WRAP:-prlimit --nofile=256:4096 --}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-connector-kind-node:dev}
TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools"

P=$LAB_PREFIX
HOST_TUN_IP=10.254.248.1
AGENT_TUN_IP=10.254.248.2
NET_A="${P}-a";      SUBNET_A=10.234.16.0/24;    IP_A=10.234.16.10;   C_A="${P}-a1"
NET_INT="${P}-int";  SUBNET_INT=10.234.18.0/24;  IP_INT=10.234.18.10; C_INT="${P}-i1"
NET_CORP="${P}-corp"; SUBNET_CORP=10.234.130.0/24; IP_CORP=10.234.130.10; C_CORP="${P}-c1"
CORP_ROUTE=10.234.128.0/17
VPN="${P}vpn"        # the VPN's interface in the Mac (a veth whose peer goes nowhere)
VPN_PEER="${P}vpx"
LISTEN_PORT=8123     # a listener on the Mac, at its tunnel address
CONFIG=""            # the config of the daemon running now
BASE_CONFIG=""
TIMES=()             # "what: figure"

# ------------------------------------------------------------------------ helpers
ms_since() { echo $(( $(now_ms) - $1 )); }
record() { TIMES+=("$1: $2"); lab_log "FIGURE $1: $2"; }

STATUS=""
status_now() { STATUS="$LAB_TMP/status.json"; lab_status_json "$CONFIG" "$STATUS"; }
status_is() { status_now && [ "$(lab_status_eval "$STATUS" "$1")" = True ]; }
status_desc() { status_now; head -c 600 "$STATUS" "$STATUS.err" 2>/dev/null | tr '\n' ' '; }
# check NAME SECONDS DETAIL-COMMAND COMMAND... — pass when COMMAND succeeds within SECONDS.
check() {
  local name=$1 secs=$2 detail=$3; shift 3
  if wait_until "$secs" "$@"; then lab_pass "$name" "ok"; else lab_fail "$name" "$(eval "$detail")"; fi
}

mac_tun_routes() {
  ip -n "$LAB_NS" -4 route show dev "$LAB_TUN" 2>/dev/null | grep -v 'proto kernel' | awk '{ print $1 }' | sort
}
mac_has_tun_route() { mac_tun_routes | grep -qx "$1"; }
mac_lacks_tun_route() { ! mac_has_tun_route "$1"; }

agent_id() { docker inspect -f '{{.Id}}' "$LAB_AGENT_NAME" 2>/dev/null; }
agent_arg() { # FLAG — the value of FLAG on the agent's command line
  docker inspect -f '{{range .Config.Cmd}}{{println .}}{{end}}' "$LAB_AGENT_NAME" 2>/dev/null \
    | awk -v f="$1" 'p { print; exit } $0 == f { p = 1 }'
}

# A config like the base one plus extra lines.
write_config() { # PATH [EXTRA...]
  lab_write_config "$@"
  chmod 644 "$1"
}

# Start the daemon with CONFIG-FILE; pass NAME when C_A answers HTTP within 20 s.
daemon_up() { # CONFIG-FILE NAME
  local t0
  CONFIG=$1
  t0=$(now_ms)
  lab_daemon_start "$CONFIG"
  if wait_until 20 http_probe_up "$IP_A" "$C_A" && lab_daemon_alive; then
    lab_pass "$2" "HTTP to $C_A after $(ms_since "$t0") ms"
    return 0
  fi
  lab_fail "$2" "no HTTP reply from $C_A ($IP_A) within 20 s; $(status_desc)"
  return 1
}
http_probe_up() { lab_daemon_alive || return 0; http_probe_fast "$1" "$2"; }

daemon_down() { lab_daemon_stop TERM 20 || lab_warn "daemon did not stop within 20 s"; }

# ------------------------------------------------------------------------ cleanup
hard_cleanup() {
  local c
  if lab_daemon_alive; then lab_daemon_stop TERM 20 >/dev/null 2>&1 || true; fi
  pkill -f "$TOOLS/slow-docker.py .*$LAB_PREFIX" 2>/dev/null || true
  lab_topologies_remove cnh
  if docker info >/dev/null 2>&1; then
    lab_agent_remove
    for c in $(docker ps -aq --filter "label=$LAB_LABEL_KEY"); do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(docker network ls -q --filter "label=$LAB_LABEL_KEY"); do docker network rm "$c" >/dev/null 2>&1 || true; done
    # What the first-start case built (its final image and the build's first stage).
    # shellcheck disable=SC2046
    docker image rm -f $(docker images -q --filter "label=$LAB_LABEL_KEY") >/dev/null 2>&1 || true
  fi
  lab_delete_tagged "$LAB_EMU_TAG"
  lab_delete_tagged "$LAB_PROBE_TAG"
  lab_delete_tagged "$LAB_AGENT_TAG"
}

hard_leftovers() {
  lab_topologies_left cnh
  if docker info >/dev/null 2>&1; then
    docker ps -a --filter "label=$LAB_LABEL_KEY" --format 'container {{.Names}}'
    docker ps -a --filter "name=^/${LAB_AGENT_NAME}\$" --format 'container {{.Names}}'
    docker network ls --filter "label=$LAB_LABEL_KEY" --format 'network {{.Name}}'
    docker images --filter "label=$LAB_LABEL_KEY" --format 'image {{.ID}} {{.Repository}}:{{.Tag}}'
  fi
  local tag
  for tag in "$LAB_EMU_TAG" "$LAB_PROBE_TAG" "$LAB_AGENT_TAG"; do
    lab_rules_tagged "$tag" | sed 's/^/rule /'
  done
}

LAB_CLEANUP_FN=hard_cleanup
LAB_LEFTOVERS_FN=hard_leftovers

hard_init() {
  lab_init python3 /usr/bin/python3 setpriv prlimit busybox ss
  lab_need_images "$LAB_AGENT_IMAGE" "$LAB_WORKLOAD_IMAGE" "$KIND_NODE_IMAGE"
}

workload() { # NAME NET IP
  docker run -d --name "$1" --hostname "$1" --label "$LAB_LABEL" --network "$2" --ip "$3" \
    "$LAB_WORKLOAD_IMAGE" /bin/serve "$1" >/dev/null
}

setup() {
  lab_log "topology: netns $LAB_NS ($LAB_MAC_IP) <-> $LAB_VETH_VM ($LAB_VM_IP) in the VM"
  lab_topology_up
  lab_network "$NET_A" "$SUBNET_A"
  lab_network "$NET_INT" "$SUBNET_INT" --internal
  lab_network "$NET_CORP" "$SUBNET_CORP"
  workload "$C_A" "$NET_A" "$IP_A"
  workload "$C_INT" "$NET_INT" "$IP_INT"
  workload "$C_CORP" "$NET_CORP" "$IP_CORP"
  local c ip
  for c in "$C_A|$IP_A" "$C_INT|$IP_INT" "$C_CORP|$IP_CORP"; do
    ip=${c#*|}; c=${c%|*}
    PROBE_NS='' wait_until 15 http_probe "$ip" "$c" 1 || lab_die "workload $c ($ip) does not answer HTTP even from the VM"
  done
  lab_log "emulating Engine 28.2's firewall on the lab's networks ($(lab_docker_ipt))"
  emulate_28_2 "$NET_A"; emulate_28_2 "$NET_INT"; emulate_28_2 "$NET_CORP"
  BASE_CONFIG="$LAB_TMP/base.toml"
  write_config "$BASE_CONFIG"
  CONFIG=$BASE_CONFIG
  mkdir -p "$LAB_TMP/www" && echo "the Mac" >"$LAB_TMP/www/index.html"
}

# ------------------------------------------------------- case: before connector
case_before() {
  if http_probe "$IP_A" "$C_A" 1; then
    lab_fail "before connector: HTTP from the Mac to $C_A fails (28.2 firewall)" "it answered: the emulation is not effective"
  else
    lab_pass "before connector: HTTP from the Mac to $C_A fails (28.2 firewall)" "no answer"
  fi
}

# ------------------------------------------- case: SIGTERM while the image is fetched
# The agent image lookup hangs (a pull or a build takes minutes on a first start):
# `brew services stop` must not have to wait for SIGKILL, and nothing may be left.
case_sigterm_during_start() {
  local sock="$LAB_TMP/slow-docker.sock" cfg="$LAB_TMP/slow.toml" proxy t0 rc=""
  python3 "$TOOLS/slow-docker.py" "$sock" /var/run/docker.sock 120 ' /(v[0-9.]+/)?images/' "$LAB_PREFIX" \
    >"$LAB_TMP/slow-docker.log" 2>&1 &
  proxy=$!
  wait_until 5 test -S "$sock" || lab_warn "slow-docker proxy did not start: $(cat "$LAB_TMP/slow-docker.log")"
  write_config "$cfg"
  sed -i "s|^docker_host = .*|docker_host = \"unix://$sock\"|" "$cfg"
  CONFIG=$cfg
  lab_daemon_start "$cfg"
  # Past the Docker connection, into the image lookup.
  wait_until 15 grep -q "connected to Docker" "$LAB_DAEMON_LOG" || lab_warn "the daemon never connected to the slow Docker socket"
  sleep 1
  t0=$(now_ms)
  local pid=$LAB_DAEMON_PID
  kill -TERM "$pid" 2>/dev/null
  if wait_until 5 lab_not_running "$pid"; then
    wait "$pid" 2>/dev/null; rc=$?
    record "exit after SIGTERM during start-up" "$(ms_since "$t0") ms"
    LAB_DAEMON_PID=""
    if [ "$rc" = 0 ]; then
      lab_pass "SIGTERM while the agent image is fetched: the daemon exits 0 within 5 s" "exit 0 after $(ms_since "$t0") ms"
    else
      lab_fail "SIGTERM while the agent image is fetched: the daemon exits 0 within 5 s" "exit $rc"
    fi
  else
    lab_fail "SIGTERM while the agent image is fetched: the daemon exits 0 within 5 s" "still running 5 s after SIGTERM (the signal was lost)"
    lab_daemon_stop KILL 5 || true
  fi
  local left=""
  ip -n "$LAB_NS" link show "$LAB_TUN" >/dev/null 2>&1 && left="$left tun $LAB_TUN;"
  [ -e "$LAB_TMP/connector.sock" ] && left="$left control socket;"
  [ -n "$(docker ps -aq --filter "name=^/${LAB_AGENT_NAME}\$")" ] && left="$left agent container;"
  [ -n "$(mac_tun_routes)" ] && left="$left routes;"
  if [ -z "$left" ]; then
    lab_pass "after SIGTERM during start-up: no tun, socket, container or route left" "none"
  else
    lab_fail "after SIGTERM during start-up: no tun, socket, container or route left" "left:$left"
  fi
  kill "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null
  lab_agent_remove
  CONFIG=$BASE_CONFIG
}

# ---------------------------------------------- case: a first start that builds the image
# The release image cannot be pulled (no registry here, as offline or before a release):
# the daemon builds it from the agent sources (CONNECTOR_AGENT_SRC, the formula's
# share/connector/agent-src). Here the "sources" are a Dockerfile whose steps take a few
# seconds and whose result is the lab's agent. `status` must say what is going on.
BUILT_IMAGE="connector-agent:hard-built-$P"

agent_sources() { # DIR
  mkdir -p "$1/host" "$1/protocol" "$1/tunnel" "$1/vm-agent"
  : >"$1/Cargo.toml"; : >"$1/Cargo.lock"
  cat >"$1/vm-agent/Dockerfile" <<DOCKERFILE
FROM $LAB_WORKLOAD_IMAGE AS slow
LABEL $LAB_LABEL
RUN sleep 2
RUN sleep 2
RUN sleep 2
FROM $LAB_AGENT_IMAGE
ARG TARGETARCH
LABEL $LAB_LABEL
RUN ["/usr/local/bin/connector-agent", "version"]
DOCKERFILE
}

phases_seen() { # STATUS-FILE — one line "name detail" per poll
  lab_status_eval "$1" "s['phase']['name'] + ' ' + (s['phase'].get('detail') or '')"
}

case_slow_first_start() {
  local src="$LAB_TMP/agent-src" cfg="$LAB_TMP/build.toml" t0 seen="$LAB_TMP/phases"
  agent_sources "$src"
  write_config "$cfg"
  sed -i "s|^agent_image = .*|agent_image = \"$BUILT_IMAGE\"|" "$cfg"
  CONFIG=$cfg
  : >"$seen"
  t0=$(now_ms)
  export CONNECTOR_AGENT_SRC="$src"
  lab_daemon_start "$cfg"
  unset CONNECTOR_AGENT_SRC
  local refused=""
  while [ $(( $(now_ms) - t0 )) -lt 120000 ] && lab_daemon_alive; do
    if lab_status_json "$cfg" "$LAB_TMP/st.json"; then
      phases_seen "$LAB_TMP/st.json" >>"$seen"
      if [ -z "$refused" ] && grep -q '^building step' "$seen"; then
        refused=$(ip netns exec "$LAB_NS" timeout 10 "$LAB_CONNECTOR" sync-networks --config "$cfg" 2>&1)
      fi
      grep -q '^ready' "$seen" && break
    fi
    sleep 0.3
  done
  record "first start with an agent image to build: until status says ready" "$(ms_since "$t0") ms"
  lab_log "phases seen: $(uniq "$seen" | paste -sd'|' -)"
  if grep -Eq '^building step [1-9][0-9]*/[1-9]' "$seen" && grep -q '^ready' "$seen"; then
    lab_pass "while the agent image is built, status shows the build's steps, then ready" "$(uniq "$seen" | paste -sd'|' -)"
  else
    lab_fail "while the agent image is built, status shows the build's steps, then ready" "seen: $(uniq "$seen" | paste -sd'|' -); $(tail -n 3 "$LAB_DAEMON_LOG")"
  fi
  if [[ "$refused" == *"still starting (building step"* ]]; then
    lab_pass "sync-networks during start-up is refused with the phase" "$refused"
  else
    lab_fail "sync-networks during start-up is refused with the phase" "got: ${refused:-nothing (never saw a build step)}"
  fi
  check "the agent built on the spot carries the tunnel: $C_A answers" 20 'echo "$(status_desc)"' \
    http_probe "$IP_A" "$C_A" 2
  daemon_down
  docker image rm -f "$BUILT_IMAGE" >/dev/null 2>&1 || true
  CONFIG=$BASE_CONFIG
}

# --------------------------------------------------- case: full-tunnel VPN, corporate
# OpenVPN's `redirect-gateway def1` / wg-quick on macOS: 0.0.0.0/1 and 128.0.0.0/1 on the
# VPN's interface, plus a corporate route over the VPN that covers one Docker network.
# They stay for the rest of the suite: a real Mac has them.
vpn_up() {
  ip -n "$LAB_NS" link add "$VPN" type veth peer name "$VPN_PEER"
  ip -n "$LAB_NS" addr add 10.99.234.1/30 dev "$VPN"
  ip -n "$LAB_NS" link set "$VPN" up
  ip -n "$LAB_NS" link set "$VPN_PEER" up
  ip -n "$LAB_NS" route add 0.0.0.0/1 dev "$VPN"
  ip -n "$LAB_NS" route add 128.0.0.0/1 dev "$VPN"
  ip -n "$LAB_NS" route add "$CORP_ROUTE" via 10.99.234.2 dev "$VPN"
}
vpn_routes() { ip -n "$LAB_NS" -4 route show dev "$VPN" | grep -v 'proto kernel' | awk '{print $1}' | sort | paste -sd' ' -; }

case_full_tunnel_vpn() {
  vpn_up
  lab_log "VPN routes in the Mac: $(vpn_routes)"
  daemon_up "$BASE_CONFIG" "behind a full-tunnel VPN: the daemon routes Docker networks (HTTP to $C_A through the tunnel)" || return
  check "behind a full-tunnel VPN: $SUBNET_A is routed through $LAB_TUN" 5 'echo "tun routes: $(mac_tun_routes | paste -sd, -); $(status_desc)"' \
    mac_has_tun_route "$SUBNET_A"
  local want="conflicts with existing route $CORP_ROUTE via 10.99.234.2 dev $VPN"
  check "a corporate route over the VPN: $NET_CORP is skipped and status names the route" 5 \
    'echo "status networks: $(lab_status_eval "$STATUS" "net(\"$NET_CORP\")")"' \
    status_is "any(n['state'] == 'skipped' and n['reason'] == '$want' for n in net('$NET_CORP'))"
  if mac_lacks_tun_route "$SUBNET_CORP"; then
    lab_pass "a corporate route over the VPN: no route of ours for $SUBNET_CORP" "none"
  else
    lab_fail "a corporate route over the VPN: no route of ours for $SUBNET_CORP" "$(mac_tun_routes | paste -sd, -)"
  fi
  daemon_down
  # The user lists the corporate range: the Docker network inside it is routed anyway.
  local cfg="$LAB_TMP/allow.toml"
  write_config "$cfg" "allow_conflicts = [\"$CORP_ROUTE\"]"
  BASE_CONFIG=$cfg
  daemon_up "$cfg" "allow_conflicts = [\"$CORP_ROUTE\"]: the daemon starts" || return
  check "allow_conflicts: $C_CORP inside the corporate range answers HTTP through the tunnel" 10 \
    'echo "tun routes: $(mac_tun_routes | paste -sd, -); $(status_desc)"' http_probe "$IP_CORP" "$C_CORP" 2
  if [ "$(vpn_routes)" = "0.0.0.0/1 10.234.128.0/17 128.0.0.0/1" ]; then
    lab_pass "the VPN's routes are untouched" "$(vpn_routes)"
  else
    lab_fail "the VPN's routes are untouched" "now: $(vpn_routes)"
  fi
}

# ------------------------------------------------- case: --internal container → Mac
mac_listener_up() {
  ip netns exec "$LAB_NS" busybox httpd -f -p "$HOST_TUN_IP:$LISTEN_PORT" -h "$LAB_TMP/www" &
  MAC_LISTENER=$!
  wait_until 5 ip netns exec "$LAB_NS" sh -c "ss -ltn | grep -q '$HOST_TUN_IP:$LISTEN_PORT'"
}
# from_container NAME [IP PORT] — an HTTP request from inside the container (busybox nc;
# the image's static wget cannot run); prints the answer or nc's error.
from_container() {
  docker exec "$1" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | timeout 8 nc -w 5 ${2:-$HOST_TUN_IP} ${3:-$LISTEN_PORT} 2>&1; echo \"nc exit \$?\""
}
reaches_mac() { from_container "$1" | grep -q 'the Mac'; }

case_container_to_mac() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  mac_listener_up || lab_warn "the Mac's listener on $HOST_TUN_IP:$LISTEN_PORT did not come up"
  check "the Mac reaches the --internal container $C_INT (replies come back)" 10 'echo "HTTP to $IP_INT failed"' \
    http_probe "$IP_INT" "$C_INT" 2
  local out
  out=$(from_container "$C_INT")
  if [[ "$out" == *"the Mac"* ]]; then
    lab_fail "a container on an --internal network cannot open a connection to the Mac" "it got: $(tr '\n' ' ' <<<"$out")"
  elif [[ "$out" == *"nc exit"* ]]; then
    lab_pass "a container on an --internal network cannot open a connection to the Mac" "$(tr '\n' ' ' <<<"${out:0:100}")"
  else
    lab_fail "a container on an --internal network cannot open a connection to the Mac" "the probe did not run: $out"
  fi
  out=$(from_container "$C_A")
  if [[ "$out" == *"the Mac"* ]]; then
    lab_fail "a container on a bridge network cannot open a connection to the Mac either" "it got: $(tr '\n' ' ' <<<"$out")"
  elif [[ "$out" == *"nc exit"* ]]; then
    lab_pass "a container on a bridge network cannot open a connection to the Mac either" "$(tr '\n' ' ' <<<"${out:0:100}")"
  else
    lab_fail "a container on a bridge network cannot open a connection to the Mac either" "the probe did not run: $out"
  fi
  # The agent's control port answers only on its tun: from a container it is closed.
  out=$(from_container "$C_A" "$AGENT_TUN_IP" 51872)
  if [[ "$out" == *"refused"* ]]; then
    lab_pass "the agent's control port is closed to containers (bound to its tun)" "$(tr '\n' ' ' <<<"${out:0:100}")"
  else
    lab_fail "the agent's control port is closed to containers (bound to its tun)" "$(tr '\n' ' ' <<<"${out:0:160}")"
  fi
  local caps
  caps=$(docker inspect -f '{{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}} {{json .HostConfig.SecurityOpt}}' "$LAB_AGENT_NAME")
  if [[ "$caps" == '["ALL"] ["NET_ADMIN","NET_RAW"] ["no-new-privileges"]' ]]; then
    lab_pass "the agent container drops every capability but NET_ADMIN and NET_RAW" "$caps"
  else
    lab_fail "the agent container drops every capability but NET_ADMIN and NET_RAW" "$caps"
  fi
  # Opt-in: containers may open connections to the Mac.
  daemon_down
  local cfg="$LAB_TMP/open.toml"
  write_config "$cfg" "allow_conflicts = [\"$CORP_ROUTE\"]" "allow_container_connections = true"
  daemon_up "$cfg" "allow_container_connections = true: the daemon starts" || return
  check "allow_container_connections = true: the --internal container reaches the Mac" 10 \
    'echo "$(from_container "$C_INT" | tr "\n" " ")"' reaches_mac "$C_INT"
  daemon_down
  kill "$MAC_LISTENER" 2>/dev/null; wait "$MAC_LISTENER" 2>/dev/null
  daemon_up "$BASE_CONFIG" "back to the default config: the daemon starts" || true
}

# ------------------------------------------------ kind nodes nobody audited (fixtures)
# kind_node NAME CLUSTER — a container carrying kind's labels (a control plane).
kind_node() {
  docker run -d --name "$1" --hostname "$1" --label "$LAB_LABEL" \
    --label "io.x-k8s.kind.cluster=$2" --label "io.x-k8s.kind.role=control-plane" \
    --network "$NET_A" "$KIND_NODE_IMAGE" >/dev/null
}
node_write() { # NODE PATH < CONTENT
  docker exec -i "$1" sh -c "mkdir -p \"\$(dirname '$2')\" && cat >'$2'"
}
kubeadm_conf() { # POD-SUBNET SERVICE-SUBNET
  printf 'apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: "%s"\n  serviceSubnet: "%s"\n' "$1" "$2"
}
# Nine levels of nine aliases: 387 million nodes once expanded.
alias_bomb() {
  echo 'kind: ClusterConfiguration'
  echo 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
  local prev=a l
  for l in b c d e f g h i; do
    echo "$l: &$l [*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev]"
    prev=$l
  done
  echo 'networking: {podSubnet: "10.238.0.0/16", serviceSubnet: "10.239.0.0/24"}'
}

STARTING="${P}-starting"
SLOW="${P}-slow"

case_pending_cluster_follow() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  # A cluster whose control plane has no kubeadm.conf yet, and one whose API server
  # hangs (kubectl never answers): both stay pending and are retried, backing off.
  kind_node "$STARTING-control-plane" "$STARTING"
  kind_node "$SLOW-control-plane" "$SLOW"
  kubeadm_conf 10.236.0.0/16 10.237.0.0/24 | node_write "$SLOW-control-plane" /kind/kubeadm.conf
  echo "apiVersion: v1" | node_write "$SLOW-control-plane" /etc/kubernetes/admin.conf
  printf '#!/bin/sh\nexec sleep 3600\n' | node_write "$SLOW-control-plane" /usr/bin/kubectl
  check "kind clusters still starting are reported pending" 30 'echo "$(status_desc)"' \
    status_is "st('$STARTING', 'pods') == 'pending' and st('$SLOW', 'pods') == 'pending'"
  # Let the retries back off (3 s, 6 s, 12 s…), as they do while a cluster takes a minute.
  sleep 8
  local i net subnet ip c t0 ms worst=0 all=()
  for i in 0 1 2; do
    net="${P}-late$i"; subnet="10.234.$((32 + i)).0/24"; ip="10.234.$((32 + i)).10"; c="${P}-l$i"
    lab_network "$net" "$subnet"
    emulate_28_2 "$net"
    workload "$c" "$net" "$ip"
    PROBE_NS='' wait_until 10 http_probe "$ip" "$c" 1 || lab_warn "$c does not answer even from the VM"
    t0=$(now_ms)
    if wait_until 30 http_probe_fast "$ip" "$c"; then
      ms=$(ms_since "$t0"); all+=("$ms")
      [ "$ms" -gt "$worst" ] && worst=$ms
    else
      all+=("none"); worst=999999
    fi
    docker rm -f "$c" >/dev/null
    emulation_remove_net "$net"
    docker network rm "$net" >/dev/null
    wait_until 5 mac_lacks_tun_route "$subnet" || lab_warn "route $subnet still there 5 s after its network went"
  done
  record "new network reachable while kind clusters are pending (3 rounds, ms)" "${all[*]}"
  if [ "$worst" -le 3000 ]; then
    lab_pass "while kind clusters are pending, a new network is reachable within 3 s" "${all[*]} ms"
  else
    lab_fail "while kind clusters are pending, a new network is reachable within 3 s" "${all[*]} ms"
  fi
  docker rm -f "$STARTING-control-plane" "$SLOW-control-plane" >/dev/null
  check "pending clusters deleted: they leave the status" 40 'echo "$(status_desc)"' \
    status_is "c('$STARTING') is None and c('$SLOW') is None"
}

# ----------------------------------------------------- case: hostile kind containers
WIDE="${P}-wide"
STEAL="${P}-steal"
BOMB="${P}-bomb"

case_hostile_kind() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  kind_node "$WIDE-control-plane" "$WIDE"
  kubeadm_conf 0.0.0.0/0 127.0.0.0/8 | node_write "$WIDE-control-plane" /kind/kubeadm.conf
  kind_node "$STEAL-control-plane" "$STEAL"
  # A Docker network's range for pods, the Mac's own network for Services.
  kubeadm_conf "$SUBNET_A" 10.234.0.0/24 | node_write "$STEAL-control-plane" /kind/kubeadm.conf
  kind_node "$BOMB-control-plane" "$BOMB"
  alias_bomb | node_write "$BOMB-control-plane" /kind/kubeadm.conf
  check "hostile kind CIDRs are shown as rejected with the reason" 30 'echo "$(status_desc)"' \
    status_is "st('$WIDE', 'pods') == 'rejected' and st('$WIDE', 'services') == 'rejected' and st('$STEAL', 'pods') == 'rejected' and st('$STEAL', 'services') == 'rejected'"
  status_now
  lab_log "status of the hostile clusters:"
  lab_status_eval "$STATUS" "'\n'.join('    %s %s: %s' % (x['name'], w, x[w].get('reason', x[w]['state'])) for x in clusters for w in ('pods', 'services'))"
  if [ "$(lab_status_eval "$STATUS" "'default route' in c('$WIDE')['pods']['reason'] and 'loopback' in c('$WIDE')['services']['reason'] and 'Docker network' in c('$STEAL')['pods']['reason'] and \"host's network\" in c('$STEAL')['services']['reason']")" = True ]; then
    lab_pass "the rejections name the reason (default route, loopback, a Docker network, the host's network)" "ok"
  else
    lab_fail "the rejections name the reason (default route, loopback, a Docker network, the host's network)" "$(status_desc)"
  fi
  check "an alias bomb in kubeadm.conf is refused, not expanded" 30 'echo "$(status_desc)"' \
    status_is "'alias' in (c('$BOMB') or {}).get('problem', '')"
  local hwm
  if lab_daemon_alive; then
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$LAB_DAEMON_PID/status")
    record "daemon peak RSS with the hostile kind nodes" "$((hwm / 1024)) MB"
    if [ "$hwm" -lt $((100 * 1024)) ]; then
      lab_pass "with an alias bomb and absurd CIDRs the daemon lives and stays under 100 MB RSS" "peak $((hwm / 1024)) MB"
    else
      lab_fail "with an alias bomb and absurd CIDRs the daemon lives and stays under 100 MB RSS" "peak $((hwm / 1024)) MB"
    fi
  else
    lab_fail "with an alias bomb and absurd CIDRs the daemon lives and stays under 100 MB RSS" "the daemon died"
    docker rm -f "$WIDE-control-plane" "$STEAL-control-plane" "$BOMB-control-plane" >/dev/null
    return
  fi
  local bad="" r
  for r in 0.0.0.0/0 127.0.0.0/8 10.234.0.0/24 10.238.0.0/16 10.239.0.0/24; do
    mac_has_tun_route "$r" && bad="$bad Mac:$r"
    [ -n "$(ip -4 route show root "$r" | grep -v 'proto kernel')" ] && [ "$r" != 0.0.0.0/0 ] && bad="$bad VM:$(ip -4 route show root "$r" | head -n 1)"
  done
  if [ "$(lab_status_eval "$STATUS" "any(v['destination'].startswith(('0.0.0.0', '127.', '10.234.0.', '10.234.16.', '10.238.', '10.239.')) for v in s['kind']['vm_routes']['wanted'])")" = True ]; then
    bad="$bad VM routes wanted: $(lab_status_eval "$STATUS" "s['kind']['vm_routes']['wanted']")"
  fi
  if [ -z "$bad" ]; then
    lab_pass "nothing is routed for the hostile clusters (Mac and VM)" "none"
  else
    lab_fail "nothing is routed for the hostile clusters (Mac and VM)" "$bad"
  fi
  check "with hostile kind nodes around, $C_A still answers" 5 'echo "HTTP to $IP_A failed"' http_probe "$IP_A" "$C_A" 2
  docker rm -f "$WIDE-control-plane" "$STEAL-control-plane" "$BOMB-control-plane" >/dev/null
}

# ----------------------------------------------- case: the daemon frozen for a minute
# To the daemon, a sleeping Mac looks like time jumping forward, with the VM asleep too;
# SIGSTOP and `docker pause` make it so here.
case_frozen_daemon() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  local before after t0 ms
  wait_until 10 http_probe "$IP_A" "$C_A" 2
  before=$(agent_id)
  # The whole machine sleeps: the VM (the agent) as well as the daemon. On waking the
  # daemon runs first; Docker Desktop's VM takes a moment longer.
  lab_log "freezing the daemon (SIGSTOP) and the agent (docker pause) for 55 s"
  docker pause "$LAB_AGENT_NAME" >/dev/null
  kill -STOP "$LAB_DAEMON_PID"
  sleep 55
  kill -CONT "$LAB_DAEMON_PID"
  t0=$(now_ms)
  sleep 3
  docker unpause "$LAB_AGENT_NAME" >/dev/null 2>&1 || lab_warn "could not unpause the agent (replaced already?)"
  if wait_until 15 http_probe_fast "$IP_A" "$C_A"; then
    ms=$(ms_since "$t0")
    record "HTTP to a container after a 55 s freeze" "$ms ms"
    lab_pass "after a 55 s freeze the containers answer again within 15 s" "$ms ms"
  else
    lab_fail "after a 55 s freeze the containers answer again within 15 s" "no HTTP reply from $C_A; $(status_desc)"
  fi
  # The old watchdog replaced the agent on the first health check after a freeze.
  sleep 20
  after=$(agent_id)
  if [ -n "$before" ] && [ "$before" = "$after" ]; then
    lab_pass "after a 55 s freeze the agent is not replaced" "same container ${after:0:12}"
  else
    lab_fail "after a 55 s freeze the agent is not replaced" "before ${before:0:12}, after ${after:0:12}"
  fi
  check "status shows the resume and a healthy data path" 10 'echo "$(status_desc)"' \
    status_is "s['health']['state'] == 'ok' and s['health']['last_resume_secs'] is not None and s['health']['replacements'] == 0"
}

# ---------------------------------------------------- case: forged handshake flood
case_forged_flood() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  wait_until 10 http_probe "$IP_A" "$C_A" 2
  status_now
  local before after key flood out loss
  before=$(lab_status_eval "$STATUS" "s['tunnel']['endpoint']")
  key=$(agent_arg --peer-public-key)
  lab_log "flooding $LAB_MAC_IP:$LAB_LISTEN_PORT from the VM with forged initiations (host key $key, endpoint $before)"
  python3 "$TOOLS/wg-forge.py" "$LAB_MAC_IP" "$LAB_LISTEN_PORT" "$key" 1000 14 >"$LAB_TMP/flood.out" 2>&1 &
  flood=$!
  sleep 2
  out=$(probe_in busybox ping -q -c 100 -i 0.1 -W 2 "$IP_A" 2>&1)
  loss=$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' <<<"$out")
  wait "$flood"
  lab_log "flood: $(cat "$LAB_TMP/flood.out")"
  record "ping loss to a container during 1000 forged initiations/s" "${loss:-?} %"
  if [ -n "$loss" ] && awk -v l="$loss" 'BEGIN { exit !(l < 10) }'; then
    lab_pass "during a forged-handshake flood, ping loss to a container stays under 10 %" "$loss % lost"
  else
    lab_fail "during a forged-handshake flood, ping loss to a container stays under 10 %" "${loss:-?} % lost: $(tail -n 2 <<<"$out" | paste -sd' ' -)"
  fi
  status_now
  after=$(lab_status_eval "$STATUS" "s['tunnel']['endpoint']")
  if [ "$before" = "$after" ] && [ -n "$after" ] && [ "$after" != None ]; then
    lab_pass "the forged handshakes do not move the tunnel's endpoint" "still $after"
  else
    lab_fail "the forged handshakes do not move the tunnel's endpoint" "before $before, after $after"
  fi
  check "after the flood the path works" 5 'echo "HTTP to $IP_A failed"' http_probe "$IP_A" "$C_A" 2
}

# ------------------------------------------------- case: control-socket connection flood
daemon_fds() { ls "/proc/$LAB_DAEMON_PID/fd" 2>/dev/null | wc -l; }
status_as() { # UID
  ip netns exec "$LAB_NS" setpriv --reuid="$1" --regid="$1" --clear-groups \
    timeout 10 "$LAB_CONNECTOR" status --json --config "$CONFIG" >/dev/null 2>"$LAB_TMP/status-as-$1.err"
}

case_control_flood() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  local fds0 t0 ms flood
  fds0=$(daemon_fds)
  # 400 idle connections from user nobody: more than the 256 files launchd allows.
  # (Debian's python3: a python3 under /root is not nobody's to run.)
  ip netns exec "$LAB_NS" setpriv --reuid=65534 --regid=65534 --clear-groups \
    /usr/bin/python3 "$TOOLS/hold-connections.py" "$LAB_TMP/connector.sock" 400 15 >"$LAB_TMP/hold.out" 2>&1 &
  flood=$!
  wait_until 10 grep -q '^connected' "$LAB_TMP/hold.out"
  sleep 2
  local connected
  connected=$(sed -n 's/^connected \([0-9]*\).*/\1/p' "$LAB_TMP/hold.out")
  if [ "${connected:-0}" -ge 300 ]; then
    lab_pass "user nobody opens hundreds of idle control connections" "$(head -n 1 "$LAB_TMP/hold.out")"
  else
    lab_fail "user nobody opens hundreds of idle control connections" "the flood did not run: $(head -c 300 "$LAB_TMP/hold.out")"
  fi
  t0=$(now_ms)
  if ip netns exec "$LAB_NS" timeout 10 "$LAB_CONNECTOR" status --json --config "$CONFIG" >/dev/null 2>"$LAB_TMP/status-flood.err"; then
    ms=$(ms_since "$t0")
    record "connector status (root) while 400 idle connections are held" "$ms ms"
    lab_pass "while a user holds 400 idle control connections, status (root) answers" "$ms ms"
  else
    lab_fail "while a user holds 400 idle control connections, status (root) answers" "$(head -c 200 "$LAB_TMP/status-flood.err")"
  fi
  t0=$(now_ms)
  if status_as 65533; then
    lab_pass "…and status as another unprivileged user answers too" "$(ms_since "$t0") ms"
  else
    lab_fail "…and status as another unprivileged user answers too" "$(head -c 200 "$LAB_TMP/status-as-65533.err")"
  fi
  wait "$flood"
  lab_log "flood: $(paste -sd' ' "$LAB_TMP/hold.out")"
  if wait_until 10 sh -c "[ \$(ls /proc/$LAB_DAEMON_PID/fd | wc -l) -le $((fds0 + 4)) ]"; then
    lab_pass "after the flood the daemon holds no extra file descriptors" "$(daemon_fds) open (was $fds0)"
  else
    lab_fail "after the flood the daemon holds no extra file descriptors" "$(daemon_fds) open (was $fds0)"
  fi
}

# -------------------------------------------------------------- case: SIGTERM at the end
case_sigterm() {
  lab_daemon_alive || daemon_up "$BASE_CONFIG" "(restart) the daemon routes" || return
  local pid=$LAB_DAEMON_PID t0
  t0=$(now_ms)
  if lab_daemon_stop TERM 20 && [ "$LAB_DAEMON_RC" = 0 ]; then
    record "SIGTERM to exit" "$(ms_since "$t0") ms"
    lab_pass "SIGTERM: the daemon exits 0 within 20 s" "after $(ms_since "$t0") ms"
  else
    lab_fail "SIGTERM: the daemon exits 0 within 20 s" "pid $pid rc ${LAB_DAEMON_RC:-?}"
  fi
  local left=""
  ip -n "$LAB_NS" link show "$LAB_TUN" >/dev/null 2>&1 && left="$left tun;"
  [ -n "$(docker ps -aq --filter "name=^/${LAB_AGENT_NAME}\$")" ] && left="$left agent container;"
  [ -n "$(lab_agent_rules)" ] && left="$left agent rules;"
  [ -e "$LAB_TMP/connector.sock" ] && left="$left control socket;"
  if [ -z "$left" ]; then
    lab_pass "after SIGTERM nothing of connector's is left" "none"
  else
    lab_fail "after SIGTERM nothing of connector's is left" "left:$left"
  fi
  if [ "$(vpn_routes)" = "0.0.0.0/1 10.234.128.0/17 128.0.0.0/1" ]; then
    lab_pass "after SIGTERM the VPN's routes are still there" "$(vpn_routes)"
  else
    lab_fail "after SIGTERM the VPN's routes are still there" "now: $(vpn_routes)"
  fi
}


# --------------------------------------------------------------------------- main
ALL_CASES=(case_before case_sigterm_during_start case_slow_first_start case_full_tunnel_vpn case_container_to_mac
           case_pending_cluster_follow case_hostile_kind case_frozen_daemon case_forged_flood
           case_control_flood case_sigterm)
lab_select_cases e2e-hardening "$@"
hard_init
setup
lab_cases_loop

echo
for t in "${TIMES[@]}"; do echo "figure: $t"; done
lab_summary
if [ -n "${LAB_RESULTS_FILE:-}" ]; then echo "$LAB_PASSED $LAB_FAILED" >"$LAB_RESULTS_FILE"; fi
[ "$LAB_FAILED" = 0 ]
