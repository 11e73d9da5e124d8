# The testbed's node (sourced by up.sh and down.sh, not run): a bridge for the pods, containerd
# with runc, the kubelet and kube-proxy; and the teardown that leaves nothing of them behind.
# ../shared/TESTBED.md ("What runs") says why each setting is what it is.
# shellcheck shell=bash

TB_NODE_DIR="$TB_RUN/node"
TB_KUBELET_ROOT="$TB_NODE_DIR/kubelet"
TB_CNI_CONF="$TB_NODE_DIR/cni/net.d"
TB_CNI_IPAM="$TB_NODE_DIR/cni/ipam"
TB_RUNC_ROOT="$TB_CONTAINERD_STATE/runc"
TB_SYSCTL_SAVED="$TB_NODE_DIR/sysctl.saved"
# Chains this testbed adds (FILLPROB-*) or makes others add (the kubelet's KUBE-FIREWALL,
# KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT; kube-proxy's KUBE-*; the CNI portmap's CNI-*).
TB_CHAINS_RE='^(KUBE-|CNI-|FILLPROB-)'

# ---------------------------------------------------------------- network
# node_network_up: the bridge with the node IP, a route to the Service range through it (so
# this machine reaches ClusterIPs from the node IP), forwarding only bridge to bridge.
node_network_up() {
  mkdir -p "$TB_NODE_DIR" "$TB_CNI_CONF" "$TB_CNI_IPAM"
  # Forwarding is needed for pod -> ClusterIP -> pod (DNAT on this machine, back out the same
  # bridge); the value it had is put back by down.sh.
  # Bridged traffic must pass iptables (br_netfilter), or a reply from a pod to a pod that
  # reached it through a ClusterIP skips the reverse NAT. Both values it had are put back.
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter ||
    { echo "br_netfilter is not loaded and modprobe failed" >&2; return 1; }
  {
    echo "net.ipv4.ip_forward=$(sysctl -n net.ipv4.ip_forward)"
    echo "net.bridge.bridge-nf-call-iptables=$(sysctl -n net.bridge.bridge-nf-call-iptables)"
    echo "fs.inotify.max_user_instances=$(sysctl -n fs.inotify.max_user_instances)"
  } >"$TB_SYSCTL_SAVED"
  ip link add "$TB_BRIDGE" type bridge
  ip addr add "$TB_NODE_IP/${TB_POD_CIDR#*/}" dev "$TB_BRIDGE"
  ip link set "$TB_BRIDGE" up
  ip route add "$TB_SERVICE_CIDR" dev "$TB_BRIDGE" src "$TB_NODE_IP"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Every `kubectl logs -f` (the operator follows each pod's log) costs the kubelet one inotify
  # instance while it waits at the end of the file (k8s.io/cri-client pkg/logs: a new
  # fsnotify watcher per follow). Everything here runs as root, and the per-user limit is often
  # 128: past about 100 followed pods the kubelet answers "failed to create fsnotify watcher:
  # too many open files" and the stream ends. Raised as kubelet nodes commonly have it (8192);
  # the value it had is put back by down.sh.
  if [ "$(sysctl -n fs.inotify.max_user_instances)" -lt 8192 ]; then
    sysctl -qw fs.inotify.max_user_instances=8192
  fi
  # Pods see only this machine and each other: nothing forwarded between the bridge and any
  # other interface. The API server, Prometheus and Alertmanager listen on every address (pods
  # reach them through Services): only loopback and the bridge may open a connection to them.
  iptables -N FILLPROB-FORWARD
  iptables -A FILLPROB-FORWARD -i "$TB_BRIDGE" -o "$TB_BRIDGE" -j RETURN
  iptables -A FILLPROB-FORWARD -i "$TB_BRIDGE" -j DROP
  iptables -A FILLPROB-FORWARD -o "$TB_BRIDGE" -j DROP
  iptables -I FORWARD 1 -j FILLPROB-FORWARD
  iptables -N FILLPROB-INPUT
  iptables -A FILLPROB-INPUT -i lo -j RETURN
  iptables -A FILLPROB-INPUT -i "$TB_BRIDGE" -j RETURN
  iptables -A FILLPROB-INPUT -p tcp -m multiport --dports "${TB_APISERVER##*:},$TB_KUBELET_PORT,${TB_PROM##*:},${TB_AM##*:}" -j DROP
  iptables -I INPUT 1 -j FILLPROB-INPUT
  cat >"$TB_CNI_CONF/10-testbed.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "testbed",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$TB_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$TB_CNI_IPAM",
        "ranges": [[{"subnet": "$TB_POD_CIDR", "gateway": "$TB_NODE_IP"}]]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# ---------------------------------------------------------------- containerd
node_containerd_config() {
  mkdir -p "$TB_CONTAINERD_ROOT" "$TB_CONTAINERD_STATE"
  cat >"$TB_NODE_DIR/containerd.toml" <<EOF
version = 3
root = "$TB_CONTAINERD_ROOT"
state = "$TB_CONTAINERD_STATE"

[grpc]
  address = "$TB_CONTAINERD_SOCK"

[ttrpc]
  address = "$TB_CONTAINERD_SOCK.ttrpc"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      # No registry is reachable: the pause image is built here (TB_IMG_PAUSE, testbed/images.sh).
      sandbox = '$TB_IMG_PAUSE'

  [plugins.'io.containerd.cri.v1.runtime']
    # These machines refuse a negative oom_score_adj (the sandbox asks for -998).
    restrict_oom_score_adj = true
    # Pod network namespaces under the state dir, where down.sh finds them.
    netns_mounts_under_state_dir = true
    enable_selinux = false
    # containerd's CRI asks every container's shim for its cgroup stats each second (default
    # '1s': UsageNanoCores for metrics-server, which the testbed does not run). With 300 pods
    # that was 52 % of a core in the shims and 33 % in containerd, and a Deployment restart
    # waited minutes for a CPU; at '10s' 13 % and 9 % (make bench at N=300, docs/performance.md).
    stats_collect_period = '10s'
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$TB_BIN/runc'
          Root = '$TB_RUNC_ROOT'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$TB_CNI_BIN']
      conf_dir = '$TB_CNI_CONF'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
EOF
}

# ---------------------------------------------------------------- kubelet, kube-proxy
node_kubelet_config() {
  mkdir -p "$TB_KUBELET_ROOT" "$TB_NODE_DIR/pod-logs"
  cat >"$TB_NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines boot cgroup v1 (hybrid) with no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$TB_CONTAINERD_SOCK
# Served on the node IP so the API server reaches it for logs, exec and port-forward.
address: $TB_NODE_IP
port: $TB_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: ${TB_KUBELET_HEALTHZ%:*}
healthzPort: ${TB_KUBELET_HEALTHZ##*:}
tlsCertFile: $TB_PKI/kubelet.crt
tlsPrivateKeyFile: $TB_PKI/kubelet.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $TB_PKI/ca.crt
authorization:
  mode: Webhook
clusterDNS: [$TB_DNS_IP]
clusterDomain: cluster.local
# No upstream DNS: pods resolve cluster names only.
resolvConf: ""
podLogsDir: $TB_NODE_DIR/pod-logs
maxPods: 1000
serializeImagePulls: false
# No registry can give an image back: never collect one.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
# A restarted pod (the operator's restart token) starts at once.
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusReportFrequency: 10s
EOF
  cat >"$TB_NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $TB_RUN/kube-proxy.kubeconfig
hostnameOverride: $TB_NODE_NAME
mode: iptables
clusterCIDR: $TB_POD_CIDR
bindAddress: $TB_NODE_IP
metricsBindAddress: $TB_PROXY_METRICS
healthzBindAddress: $TB_PROXY_HEALTHZ
iptables:
  # No route_localnet sysctl change: no NodePort on 127.0.0.1.
  localhostNodePorts: false
  minSyncPeriod: 0s
  syncPeriod: 30s
conntrack:
  # 0: leave this machine's conntrack sysctls as they are.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
nodePortAddresses: ["$TB_NODE_IP/32"]
EOF
}

# ---------------------------------------------------------------- teardown
# node_teardown: everything the node made, in an order where each step can still work:
# containers (through containerd while it runs), then processes left (shims, pod processes),
# mounts under the testbed's dirs, network namespaces, veths and the bridge, iptables chains,
# cgroups, sysctls.
node_kill_tasks() {
  [ -S "$TB_CONTAINERD_SOCK" ] && [ -x "$TB_BIN/ctr" ] || return 0
  local ctr=("$TB_BIN/ctr" --address "$TB_CONTAINERD_SOCK" --timeout 10s -n k8s.io) t n=0
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
    n=$((n + 1))
  done
  sleep 0.5
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1; done
  for t in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$t" >/dev/null 2>&1; done
  # The pod sandboxes too: containerd's metadata is kept in the cache, and a sandbox left in it
  # would be "recovered" (and fail to) at the next start.
  for t in $("${ctr[@]}" sandboxes ls 2>/dev/null | awk 'NR > 1 {print $1}'); do "${ctr[@]}" sandboxes rm -f "$t" >/dev/null 2>&1; done
  tb_info "containerd: killed $n task(s), deleted the containers and pod sandboxes"
}

# node_pids: processes of ours still alive: our binaries started for this run dir (the runc
# shims outlive containerd by design; another containerd of the same binary is not ours) and
# anything in the kubelet's pod cgroups.
node_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case "$exe" in "$TB_BIN"/*) ;; *) continue ;; esac
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$TB_RUN" && echo "${p#/proc/}"
  done
  cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null
}

node_kill_leftovers() {
  local pids n
  pids=$(node_pids | sort -u | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  n=$(echo $pids | wc -w)
  kill -KILL $pids 2>/dev/null
  sleep 0.5
  tb_info "killed $n leftover process(es) (shims, pod processes)"
}

node_unmount() {
  local m n=0
  # Deepest first; lazy, so a mount still busy for a moment does not stop the rest.
  while IFS= read -r m; do
    umount -l "$m" 2>/dev/null && n=$((n + 1))
  done < <(findmnt -rn -o TARGET | awk -v d="$TB_DIR/" 'index($0, d) == 1' | sort -r)
  [ $n = 0 ] || tb_info "unmounted $n mount(s) under $TB_DIR"
}

node_network_down() {
  local v
  for v in $(ip -o link show master "$TB_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null
  done
  if ip link show "$TB_BRIDGE" >/dev/null 2>&1; then
    ip link del "$TB_BRIDGE" && tb_info "removed the bridge $TB_BRIDGE and its veths"
  fi
  node_iptables_clean iptables
  node_iptables_clean ip6tables
  if [ -f "$TB_SYSCTL_SAVED" ]; then
    sysctl -qp "$TB_SYSCTL_SAVED" && tb_info "restored $(tr '\n' ' ' <"$TB_SYSCTL_SAVED")"
  fi
}

# node_iptables_clean IPTABLES: drop every rule that jumps to one of the testbed's chains, then
# the chains themselves, in every table.
node_iptables_clean() {
  local ipt="$1" table rule chain n=0
  command -v "$ipt" >/dev/null || return 0
  for table in filter nat mangle raw; do
    "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
    while IFS= read -r rule; do
      # eval: the rule as -S prints it, comments quoted ("kubernetes service portals").
      eval "\"\$ipt\" -t \"\$table\" -D ${rule#-A }" 2>/dev/null && n=$((n + 1))
    done < <("$ipt" -t "$table" -S | awk '$1 == "-A" && $2 !~ /^(KUBE-|CNI-|FILLPROB-)/ && / -j (KUBE-|CNI-|FILLPROB-)/')
    for chain in $("$ipt" -t "$table" -S | awk '$1 == "-N" {print $2}' | grep -E "$TB_CHAINS_RE"); do
      "$ipt" -t "$table" -F "$chain" 2>/dev/null
    done
    for chain in $("$ipt" -t "$table" -S | awk '$1 == "-N" {print $2}' | grep -E "$TB_CHAINS_RE"); do
      "$ipt" -t "$table" -X "$chain" 2>/dev/null && n=$((n + 1))
    done
  done
  [ $n = 0 ] || tb_info "$ipt: removed $n rule(s) and chain(s) (KUBE-*, CNI-*, FILLPROB-*)"
}

# The kubelet's cgroups (cgroupfs driver, cgroup v1: one tree per controller), deepest first.
node_cgroups_clean() {
  local d n=0
  while IFS= read -r d; do
    rmdir "$d" 2>/dev/null && n=$((n + 1))
  done < <(find /sys/fs/cgroup/*/kubepods -depth -type d 2>/dev/null)
  [ $n = 0 ] || tb_info "removed $n kubelet cgroup(s)"
}

# node_leftovers: print what the node left (empty = nothing).
node_leftovers() {
  local out=""
  local pids
  pids=$(node_pids | sort -u | tr '\n' ' ')
  [ -z "${pids// /}" ] || out+="processes: $pids"$'\n'
  local mounts
  mounts=$(findmnt -rn -o TARGET | awk -v d="$TB_DIR/" 'index($0, d) == 1')
  [ -z "$mounts" ] || out+="mounts: $(echo "$mounts" | head -5 | tr '\n' ' ')"$'\n'
  ip link show "$TB_BRIDGE" >/dev/null 2>&1 && out+="bridge: $TB_BRIDGE"$'\n'
  local veths
  veths=$(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | tr '\n' ' ')
  [ -z "${veths// /}" ] || out+="veths: $veths"$'\n'
  local ipt chains
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    chains=$(for t in filter nat mangle raw; do "$ipt" -t $t -S 2>/dev/null | awk '$1 == "-N" {print $2}'; done | grep -E "$TB_CHAINS_RE" | tr '\n' ' ')
    [ -z "${chains// /}" ] || out+="$ipt chains: $chains"$'\n'
  done
  [ ! -d /sys/fs/cgroup/pids/kubepods ] || out+="cgroups: /sys/fs/cgroup/*/kubepods"$'\n'
  printf '%s' "$out"
}
