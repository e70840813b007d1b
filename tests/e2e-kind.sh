#!/usr/bin/env bash
# tests/e2e-kind.sh — kind clusters from the Mac (issue 4): node IPs and NodePorts,
# pod IPs, Service ClusterIPs, `[kind]` config, CIDR conflicts between clusters, and
# clusters deleted live — against a real Docker engine, in the lab of tests/lab.sh,
# with the kind fixture of tests/kind-fixture.sh.
#
#   sudo tests/e2e-kind.sh [CASE...]   (default: every case below, in order)
#
# Needs: target/debug/connector, image connector-agent:dev (scripts/agent-image
# --local), a running dockerd, python3. Builds connector-kind-node:dev itself
# (scripts/kind-node-image, idempotent, no registry).
#
# Its own lab names, so it never collides with tests/e2e.sh, tests/e2e-live.sh or the
# benchmark: prefix cnk<pid>, veth 10.233.0.0/30, tunnel 10.254.251.0/30, UDP port
# 51876, agent container connector-agent-kind (rule tag connector-agent-kind), test
# label io.connector.kindtest. The fixture clusters are cnk<pid>-a and cnk<pid>-b on the
# `kind` network (created and labelled if missing, reused and left alone if not), with
# kind's default CIDRs 10.244.0.0/16 (pods) and 10.96.0.0/16 (Services). A guard rule
# in the "VM" drops anything for those CIDRs that would leave through the machine's
# uplink, so no probe ever leaves the lab. Takes the lab lock (/run/connector-lab.lock).
#
# Environment: LAB_KEEP=1 keeps the logs, LAB_RESULTS_FILE=F writes "passed failed" to F.
# The last line is "N passed, M failed"; the exit status is 0 only if M = 0.
set -uo pipefail

LAB_PREFIX=cnk$$
LAB_AGENT_NAME=connector-agent-kind
LAB_AGENT_TAG=$LAB_AGENT_NAME        # the agent tags its rules with its agent_name
LAB_LISTEN_PORT=51876
LAB_TUNNEL_CIDR=10.254.251.0/30
# shellcheck source=tests/lab.sh
. "$(dirname "${BASH_SOURCE[0]}")/lab.sh"

# lab.sh fixes these; this suite has its own.
LAB_VM_IP=10.233.0.1
LAB_MAC_IP=10.233.0.2
LAB_EMU_TAG=connector-kind-emulation
LAB_PROBE_TAG=connector-kind-probe
LAB_LABEL_KEY=io.connector.kindtest
LAB_LABEL="$LAB_LABEL_KEY=$LAB_PREFIX"
LAB_LOCK=${LAB_LOCK:-/run/connector-lab.lock}
GUARD_TAG=connector-kind-guard

KIND_LABEL_KEY=$LAB_LABEL_KEY
KIND_LABEL=$LAB_LABEL
# shellcheck source=tests/kind-fixture.sh
. "$(dirname "${BASH_SOURCE[0]}")/kind-fixture.sh"

P=$LAB_PREFIX
A="${P}-a"
B="${P}-b"
CONFIG=""          # the config of the daemon running now
BASE_CONFIG=""     # defaults ([kind] absent)
TIMES=()

# ------------------------------------------------------------------------ helpers
ms_since() { echo $(( $(now_ms) - $1 )); }
record_time() { TIMES+=("$1: $2 ms"); lab_log "TIME $1: $2 ms"; }

cp_of() { echo "$1-control-plane"; }
worker_of() { echo "$1-worker"; }

connector() { ip netns exec "$LAB_NS" timeout 20 "$LAB_CONNECTOR" "$@" --config "$CONFIG"; }
status_json() { connector status --json >"$1" 2>"$1.err"; }
# status_eval FILE PYTHON-EXPR — see lab_status_eval (c(name), st(name, what)).
status_eval() { lab_status_eval "$@"; }
STATUS="" # the last status file read
status_now() { STATUS="$LAB_TMP/status.json"; status_json "$STATUS"; }
# status_is EXPR — true when EXPR (see status_eval) prints True right now.
status_is() { status_now && [ "$(status_eval "$STATUS" "$1")" = True ]; }

# The VM's routes inside CIDR as "dst via gw", sorted (what `ip route` shows a user).
vm_routes() { # CIDR
  ip -4 route show root "$1" | awk '{ for (i = 1; i < NF; i++) if ($i == "via") { print $1 " via " $(i + 1); break } }' | sort
}
# The Mac's routes through the tun (not the tunnel's own connected route), sorted.
mac_routes() {
  ip -n "$LAB_NS" -4 route show dev "$LAB_TUN" 2>/dev/null | grep -v 'proto kernel' | awk '{ print $1 }' | sort
}
mac_has_route() { [ "$(mac_routes | grep -cx "$1")" -gt 0 ]; }
# The routes the fixture cluster CLUSTER should have in the VM.
expected_vm_pod_routes() { # CLUSTER
  local n
  for n in ${KIND_NODES[$1]}; do echo "${KIND_NODE_CIDR[$n]} via ${KIND_NODE_IP[$n]}"; done | sort
}
vm_pod_routes_are() { [ "$(vm_routes "$KIND_POD_SUBNET")" = "$1" ]; }
vm_service_routes_are() { [ "$(vm_routes "$KIND_SERVICE_SUBNET")" = "$1" ]; }
no_vm_fixture_routes() { [ -z "$(vm_routes "$KIND_POD_SUBNET")$(vm_routes "$KIND_SERVICE_SUBNET")" ]; }
no_mac_fixture_routes() {
  [ -z "$(ip -n "$LAB_NS" -4 route show root "$KIND_POD_SUBNET")$(ip -n "$LAB_NS" -4 route show root "$KIND_SERVICE_SUBNET")" ]
}

pod_body() { echo "pod $1 ${KIND_POD_IP[$1]}"; }
# The Service's endpoint in CLUSTER answers with this body.
service_body() { pod_body "$(kind_service_endpoint_node "$1")"; }

# check NAME SECONDS DETAIL COMMAND... — pass when COMMAND succeeds within SECONDS;
# DETAIL is a command run on failure to say what was seen instead.
check() {
  local name=$1 secs=$2 detail=$3; shift 3
  if wait_until "$secs" "$@"; then lab_pass "$name" "ok"; else lab_fail "$name" "$(eval "$detail")"; fi
}

# Start the daemon with CONFIG-FILE and wait until EXPR holds in its status.
daemon_start_until() { # CONFIG-FILE EXPR SECONDS CASE-NAME
  local t0
  CONFIG=$1
  t0=$(now_ms)
  lab_daemon_start "$CONFIG"
  if wait_until "$3" status_is "$2" && lab_daemon_alive; then
    record_time "$4" "$(ms_since "$t0")"
    lab_pass "$4" "after $(ms_since "$t0") ms"
    return 0
  fi
  lab_fail "$4" "status never showed: $2; $(status_desc)"
  # The next case starts its own daemon.
  if lab_daemon_alive; then daemon_stop; fi
  return 1
}

daemon_stop() {
  lab_daemon_stop TERM 20 || lab_warn "daemon did not stop within 20 s"
}

synced() { echo "s['kind']['vm_routes']['state'] == 'synced'"; }

# ------------------------------------------------------------------------ cleanup
kind_suite_cleanup() {
  local c
  if lab_daemon_alive; then lab_daemon_stop TERM 20 >/dev/null 2>&1 || true; fi
  lab_topologies_remove cnk
  if docker info >/dev/null 2>&1; then
    lab_agent_remove
    kind_fixture_cleanup
    for c in $(docker ps -aq --filter "label=$LAB_LABEL_KEY"); do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(docker network ls -q --filter "label=$LAB_LABEL_KEY"); do docker network rm "$c" >/dev/null 2>&1 || true; done
  fi
  # Routes a killed agent left for the fixture's CIDRs (the nodes are gone: no one
  # else routes these here).
  local r
  for r in $(ip -4 route show root "$KIND_POD_SUBNET" | awk '{print $1}') $(ip -4 route show root "$KIND_SERVICE_SUBNET" | awk '{print $1}'); do
    ip route del "$r" 2>/dev/null || true
  done
  lab_delete_tagged "$LAB_EMU_TAG"
  lab_delete_tagged "$LAB_PROBE_TAG"
  lab_delete_tagged "$LAB_AGENT_TAG"
  lab_delete_tagged "$GUARD_TAG"
}

kind_suite_leftovers() {
  lab_topologies_left cnk
  if docker info >/dev/null 2>&1; then
    docker ps -a --filter "label=$LAB_LABEL_KEY" --format 'container {{.Names}}'
    docker ps -a --filter "name=^/${LAB_AGENT_NAME}\$" --format 'container {{.Names}}'
    docker network ls --filter "label=$LAB_LABEL_KEY" --format 'network {{.Name}}'
  fi
  vm_routes "$KIND_POD_SUBNET" | sed 's/^/VM route /'
  vm_routes "$KIND_SERVICE_SUBNET" | sed 's/^/VM route /'
  local tag
  for tag in "$LAB_EMU_TAG" "$LAB_PROBE_TAG" "$LAB_AGENT_TAG" "$GUARD_TAG"; do
    lab_rules_tagged "$tag" | sed 's/^/rule /'
  done
}

LAB_CLEANUP_FN=kind_suite_cleanup
LAB_LEFTOVERS_FN=kind_suite_leftovers

kind_init() {
  lab_init python3 busybox
  lab_need_images "$LAB_AGENT_IMAGE"
}

# ------------------------------------------------------------------------- setup
setup() {
  lab_log "topology: netns $LAB_NS ($LAB_MAC_IP) <-> $LAB_VETH_VM ($LAB_VM_IP) in the VM"
  lab_topology_up
  # Nothing for the fixture's CIDRs may leave through the uplink (before any probe).
  local uplink cidr chain
  uplink=$(ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
  [ -n "$uplink" ] || uplink=$(ip -o link show | awk -F': ' '$2 != "lo" { print $2; exit }')
  for cidr in "$KIND_POD_SUBNET" "$KIND_SERVICE_SUBNET"; do
    for chain in FORWARD OUTPUT; do
      iptables -w -I "$chain" 1 -d "$cidr" -o "$uplink" -m comment --comment "$GUARD_TAG" -j DROP
    done
  done
  lab_log "guard: $KIND_POD_SUBNET and $KIND_SERVICE_SUBNET never leave through $uplink"

  lab_log "kind cluster $A (control plane + 1 worker)"
  kind_cluster_create "$A" 1
  lab_log "emulating Engine 28.2's firewall on every bridge network (kind included)"
  emulate_28_2_all

  BASE_CONFIG="$LAB_TMP/connector.toml"
  CONFIG=$BASE_CONFIG
  lab_write_config "$BASE_CONFIG"
  lab_write_config "$LAB_TMP/pods-off.toml" "[kind]" "pods = false"
  lab_write_config "$LAB_TMP/prefer-a.toml" "[kind]" "clusters = [\"$A\", \"$B\"]"
}

# --------------------------------------------------------------------------- cases
# What was seen, for failure messages.
vm_desc() { echo "VM: [$(vm_routes "$KIND_POD_SUBNET" | paste -sd';' -)] [$(vm_routes "$KIND_SERVICE_SUBNET" | paste -sd';' -)]"; }
mac_desc() { echo "Mac via $LAB_TUN: $(mac_routes | paste -sd' ' -)"; }
status_desc() { echo "status kind: $(status_eval "$STATUS" 'json.dumps(s.get("kind"))' | head -c 700)"; }
curl_desc() { echo "curl http://$1/: $(probe_in timeout 4 curl -sS --noproxy '*' -m 2 "http://$1/" 2>&1 | head -c 200)"; }

case_before_connector() {
  local cp w reached=""
  cp=$(cp_of "$A"); w=$(worker_of "$A")
  http_probe "${KIND_NODE_IP[$cp]}:$KIND_NODEPORT" pod 1 && reached+=" NodePort"
  http_probe "${KIND_POD_IP[$w]}" pod 1 && reached+=" pod"
  http_probe "$KIND_CLUSTER_IP" pod 1 && reached+=" ClusterIP"
  if [ -z "$reached" ]; then
    lab_pass "before connector: the Mac reaches no NodePort, pod or ClusterIP" "all fail"
  else
    lab_fail "before connector: the Mac reaches no NodePort, pod or ClusterIP" "reached:$reached"
  fi
}

case_daemon_routes_cluster() {
  daemon_start_until "$BASE_CONFIG" \
    "st('$A','pods') == 'routed' and st('$A','services') == 'routed' and $(synced)" 40 \
    "connector run: cluster $A's pods and Services routed, VM routes synced" || return
  local cp w n svc
  cp=$(cp_of "$A"); w=$(worker_of "$A"); svc=$(service_body "$A")
  for n in $cp $w; do
    check "NodePort $KIND_NODEPORT on $n (${KIND_NODE_IP[$n]}) answers from the Mac" 10 \
      "curl_desc ${KIND_NODE_IP[$n]}:$KIND_NODEPORT" http_probe "${KIND_NODE_IP[$n]}:$KIND_NODEPORT" "$svc" 2
  done
  check "pod on the control plane (${KIND_POD_IP[$cp]}) answers from the Mac" 10 \
    "curl_desc ${KIND_POD_IP[$cp]}" http_probe "${KIND_POD_IP[$cp]}" "$(pod_body "$cp")" 2
  check "pod on the worker (${KIND_POD_IP[$w]}) answers from the Mac" 10 \
    "curl_desc ${KIND_POD_IP[$w]}" http_probe "${KIND_POD_IP[$w]}" "$(pod_body "$w")" 2
  check "ClusterIP $KIND_CLUSTER_IP answers from the Mac (kube-proxy's DNAT in a node)" 10 \
    "curl_desc $KIND_CLUSTER_IP" http_probe "$KIND_CLUSTER_IP" "$svc" 2

  local via
  via=$(ip -n "$LAB_NS" route get "${KIND_POD_IP[$w]}" 2>/dev/null | head -n 1)
  if [[ "$via" == *"dev $LAB_TUN"* ]]; then
    lab_pass "the Mac reaches pods through the tunnel" "$via"
  else
    lab_fail "the Mac reaches pods through the tunnel" "route get ${KIND_POD_IP[$w]}: $via"
  fi
  check "Mac: $KIND_POD_SUBNET and $KIND_SERVICE_SUBNET routed via $LAB_TUN" 5 mac_desc \
    eval "mac_has_route $KIND_POD_SUBNET && mac_has_route $KIND_SERVICE_SUBNET"
  check "VM: each node's podCIDR via that node" 5 vm_desc vm_pod_routes_are "$(expected_vm_pod_routes "$A")"
  check "VM: $KIND_SERVICE_SUBNET via the control plane" 5 vm_desc \
    vm_service_routes_are "$KIND_SERVICE_SUBNET via ${KIND_NODE_IP[$cp]}"

  local text="$LAB_TMP/status.txt" miss="" word
  connector status >"$text" 2>&1
  for word in "$A" "$cp" "$w" "${KIND_NODE_IP[$cp]}" "${KIND_NODE_CIDR[$cp]}" "${KIND_NODE_IP[$w]}" \
              "${KIND_NODE_CIDR[$w]}" "pods      $KIND_POD_SUBNET" "services  $KIND_SERVICE_SUBNET" "routed"; do
    grep -qF -- "$word" "$text" || miss+=" '$word'"
  done
  if [ -z "$miss" ]; then
    lab_pass "connector status lists the cluster, its nodes with IPs and podCIDRs, and what is routed" \
      "$(sed -n '/^kind clusters/,$p' "$text" | paste -sd'|' - | head -c 400)"
  else
    lab_fail "connector status lists the cluster, its nodes with IPs and podCIDRs, and what is routed" \
      "missing$miss in: $(sed -n '/^kind clusters/,$p' "$text" | paste -sd'|' -)"
  fi
}

agent_running() { [ "$(docker inspect -f '{{.State.Running}}' "$LAB_AGENT_NAME" 2>/dev/null)" = true ]; }

case_agent_restart_keeps_routes() {
  # The agent dies hard; Docker's restart policy brings it back. Its routes carry
  # its route protocol: found at start and kept until the daemon's next set.
  local w before
  w=$(worker_of "$A")
  before=$(vm_routes "$KIND_POD_SUBNET")
  docker kill -s KILL "$LAB_AGENT_NAME" >/dev/null 2>&1
  sleep 1
  wait_until 20 agent_running || lab_warn "the agent is not running 20 s after docker kill"
  check "agent killed and restarted: its VM routes are the same set, each once" 20 vm_desc \
    vm_pod_routes_are "$before"
  check "agent killed and restarted: the worker's pod answers from the Mac again" 30 \
    "curl_desc ${KIND_POD_IP[$w]}" http_probe "${KIND_POD_IP[$w]}" "$(pod_body "$w")" 2
  # grep -c reads everything: with -q, docker logs could die of SIGPIPE and
  # pipefail would report the match as a failure.
  if [ "$(docker logs "$LAB_AGENT_NAME" 2>&1 | grep -c "routes of an earlier run found")" -gt 0 ]; then
    lab_pass "agent killed and restarted: it found its earlier routes by their protocol" "logged"
  else
    lab_fail "agent killed and restarted: it found its earlier routes by their protocol" \
      "no 'routes of an earlier run found' in: $(docker logs "$LAB_AGENT_NAME" 2>&1 | tail -n 5 | paste -sd'|' -)"
  fi
}

case_sigterm_removes_vm_routes() {
  daemon_stop
  check "daemon SIGTERM: the agent removed its VM routes" 5 vm_desc no_vm_fixture_routes
  check "daemon SIGTERM: no pod/Service route left on the Mac" 5 mac_desc no_mac_fixture_routes
}

case_pods_off() {
  daemon_start_until "$LAB_TMP/pods-off.toml" \
    "st('$A','pods') == 'disabled' and st('$A','services') == 'routed' and $(synced)" 40 \
    "pods = false: connector runs, status says pods disabled, Services routed" || return
  local cp w svc
  cp=$(cp_of "$A"); w=$(worker_of "$A"); svc=$(service_body "$A")
  check "pods = false: no $KIND_POD_SUBNET route on the Mac" 5 mac_desc eval "! mac_has_route $KIND_POD_SUBNET"
  check "pods = false: no pod route in the VM" 5 vm_desc vm_pod_routes_are ""
  if http_probe "${KIND_POD_IP[$w]}" pod 1; then
    lab_fail "pods = false: the worker's pod is not reachable from the Mac" "it answered"
  else
    lab_pass "pods = false: the worker's pod is not reachable from the Mac" "no answer"
  fi
  check "pods = false: the ClusterIP still answers" 10 "curl_desc $KIND_CLUSTER_IP" \
    http_probe "$KIND_CLUSTER_IP" "$svc" 2
  check "pods = false: the NodePort still answers" 10 "curl_desc ${KIND_NODE_IP[$cp]}:$KIND_NODEPORT" \
    http_probe "${KIND_NODE_IP[$cp]}:$KIND_NODEPORT" "$svc" 2
  daemon_stop
}

vm_routes_via_cluster() { # CLUSTER
  vm_pod_routes_are "$(expected_vm_pod_routes "$1")" \
    && vm_service_routes_are "$KIND_SERVICE_SUBNET via ${KIND_NODE_IP[$(cp_of "$1")]}"
}

case_conflict() {
  daemon_start_until "$BASE_CONFIG" "st('$A','pods') == 'routed' and $(synced)" 40 \
    "default config again: cluster $A routed" || return
  lab_log "kind cluster $B with the same CIDRs, created while the daemon runs"
  kind_cluster_create "$B" 1
  emulate_28_2 "$KIND_NETWORK"
  local t0 expr
  expr="st('$B','pods') == 'routed' and st('$B','services') == 'routed' and st('$A','pods') == 'conflict'"
  expr+=" and st('$A','services') == 'conflict' and c('$A')['pods']['with'] == '$B' and $(synced)"
  t0=$(now_ms)
  if wait_until 40 status_is "$expr"; then
    record_time "second cluster created -> routed" "$(ms_since "$t0")"
    lab_pass "same CIDRs: the newer cluster $B is routed, $A is reported in conflict with $B" "after $(ms_since "$t0") ms"
  else
    lab_fail "same CIDRs: the newer cluster $B is routed, $A is reported in conflict with $B" "$(status_desc)"
  fi
  local routed
  routed=$(status_eval "$STATUS" "(sum(1 for x in clusters if x['pods']['state'] == 'routed'), sum(1 for x in clusters if x['services']['state'] == 'routed'))")
  if [ "$routed" = "(1, 1)" ]; then
    lab_pass "same CIDRs: exactly one cluster routed for pods and for Services (status --json)" "$routed"
  else
    lab_fail "same CIDRs: exactly one cluster routed for pods and for Services (status --json)" "routed (pods, services) = $routed"
  fi
  check "same CIDRs: the VM routes only via $B's nodes" 10 vm_desc vm_routes_via_cluster "$B"
  local wb
  wb=$(worker_of "$B")
  check "same CIDRs: the pod IP reaches $B's pod" 10 "curl_desc ${KIND_POD_IP[$wb]}" \
    http_probe "${KIND_POD_IP[$wb]}" "$(pod_body "$wb")" 2
  local text="$LAB_TMP/status-conflict.txt"
  connector status >"$text" 2>&1
  if grep -qF "conflict with cluster $B" "$text"; then
    lab_pass "same CIDRs: connector status names the conflict" "$(grep -F "conflict with cluster $B" "$text" | head -n 1 | sed 's/^ *//')"
  else
    lab_fail "same CIDRs: connector status names the conflict" "$(sed -n '/^kind clusters/,$p' "$text" | paste -sd'|' -)"
  fi
  daemon_stop
}

case_configured_order() {
  daemon_start_until "$LAB_TMP/prefer-a.toml" \
    "st('$A','pods') == 'routed' and st('$B','pods') == 'conflict' and c('$B')['pods']['with'] == '$A' and $(synced)" 40 \
    "[kind] clusters = [\"$A\", \"$B\"]: the older $A wins, $B is reported in conflict" || return
  local wa
  wa=$(worker_of "$A")
  check "[kind] clusters order: the VM routes via $A's nodes" 10 vm_desc vm_routes_via_cluster "$A"
  check "[kind] clusters order: the pod IP reaches $A's pod" 10 "curl_desc ${KIND_POD_IP[$wa]}" \
    http_probe "${KIND_POD_IP[$wa]}" "$(pod_body "$wa")" 2
  daemon_stop
}

case_cluster_deleted() {
  daemon_start_until "$BASE_CONFIG" "st('$B','pods') == 'routed' and $(synced)" 40 \
    "default config again: the newer cluster $B routed" || return
  lab_log "deleting cluster $B while the daemon runs"
  kind_cluster_delete "$B"
  local t0 wa
  t0=$(now_ms)
  if wait_until 30 status_is "c('$B') is None and st('$A','pods') == 'routed' and $(synced)"; then
    record_time "cluster deleted -> status updated" "$(ms_since "$t0")"
    lab_pass "cluster $B deleted: it leaves the status, $A is routed again" "after $(ms_since "$t0") ms"
  else
    lab_fail "cluster $B deleted: it leaves the status, $A is routed again" "$(status_desc)"
  fi
  check "cluster $B deleted: its VM routes are gone, $A's are in place" 10 vm_desc vm_routes_via_cluster "$A"
  wa=$(worker_of "$A")
  check "cluster $B deleted: the pod IP reaches $A's pod again" 10 "curl_desc ${KIND_POD_IP[$wa]}" \
    http_probe "${KIND_POD_IP[$wa]}" "$(pod_body "$wa")" 2

  lab_log "deleting cluster $A while the daemon runs"
  kind_cluster_delete "$A"
  t0=$(now_ms)
  check "last cluster deleted: status lists no kind cluster" 30 status_desc \
    status_is "len(clusters) == 0 and $(synced)"
  check "last cluster deleted: its routes are gone from the Mac (ip -n <mac> route)" 10 mac_desc no_mac_fixture_routes
  check "last cluster deleted: its routes are gone from the VM (ip route)" 10 vm_desc no_vm_fixture_routes
  record_time "last cluster deleted -> routes gone" "$(ms_since "$t0")"
}

case_sigterm() {
  if ! lab_daemon_alive; then lab_warn "no daemon running before the SIGTERM case"; return; fi
  local pid=$LAB_DAEMON_PID n rules
  if lab_daemon_stop TERM 20 && [ "$LAB_DAEMON_RC" = 0 ]; then
    lab_pass "SIGTERM: the daemon exits 0" "pid $pid"
  else
    lab_fail "SIGTERM: the daemon exits 0" "pid $pid: exit ${LAB_DAEMON_RC:-none}"
  fi
  n=$(docker ps -aq --filter "name=^/${LAB_AGENT_NAME}\$" | grep -c . || true)
  rules=$(lab_rules_tagged "$LAB_AGENT_TAG")
  if [ "$n" = 0 ] && [ -z "$rules" ] && no_vm_fixture_routes; then
    lab_pass "after SIGTERM: no agent container, no tagged rule, no VM route" "clean"
  else
    lab_fail "after SIGTERM: no agent container, no tagged rule, no VM route" "agents: $n, rules: $(echo "$rules" | grep -c .), $(vm_desc)"
  fi
}


# --------------------------------------------------------------------------- main
ALL_CASES=(case_before_connector case_daemon_routes_cluster case_agent_restart_keeps_routes
           case_sigterm_removes_vm_routes case_pods_off case_conflict case_configured_order
           case_cluster_deleted case_sigterm)
lab_select_cases e2e-kind "$@"
kind_init
setup
lab_cases_loop

echo
for t in "${TIMES[@]}"; do echo "time: $t"; done
lab_summary
if [ -n "${LAB_RESULTS_FILE:-}" ]; then echo "$LAB_PASSED $LAB_FAILED" >"$LAB_RESULTS_FILE"; fi
[ "$LAB_FAILED" = 0 ]
