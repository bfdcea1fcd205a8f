"""Memory footprint of the local cluster: host processes by their pidfiles, pods by the kubelet.

The host side reads each recorded PID's RSS (containerd's shims are not its children: they are counted
with the pods they run); the pod side asks the kubelet's own summary API
(`/api/v1/nodes/<node>/proxy/stats/summary`, the numbers metrics-server would serve).

    python cluster/footprint.py            # a table, as `make e2e` prints it at the end
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".run" / "cluster"
KUBECTL = Path(os.environ.get("CLUSTER_BIN", Path.home() / ".cache/image-moderation/cluster/bin")) / "kubectl"
HOST_PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
                  "kube-proxy", "kube-router")
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def host_processes() -> dict[str, int]:
    out: dict[str, int] = {}
    for name in HOST_PROCESSES:
        pidfile = STATE / f"{name}.pid"
        if pidfile.exists():
            out[name] = rss_bytes(int(pidfile.read_text().strip()))
    return out


def pods(node: str) -> dict[str, int]:
    """namespace/pod -> working-set bytes, from the kubelet's summary API through the API server."""
    raw = subprocess.run([str(KUBECTL), "get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary"],
                         capture_output=True, text=True, timeout=30, check=True,
                         env={**os.environ, "KUBECONFIG": str(STATE / "kubeconfig")}).stdout
    summary = json.loads(raw)
    return {f"{p['podRef']['namespace']}/{p['podRef']['name']}": p.get("memory", {}).get("workingSetBytes", 0)
            for p in summary.get("pods", [])}


def main() -> int:
    node = os.environ.get("NODE_NAME", "im-node")
    host = host_processes()
    # A pod that just started has no stats yet (the kubelet samples every ~10 s): wait up to 40 s for them.
    deadline = time.monotonic() + 40
    pod = pods(node)
    while any(v == 0 for v in pod.values()) and time.monotonic() < deadline:
        time.sleep(5)
        pod = pods(node)
    width = max(len(k) for k in [*host, *pod, "total"])
    print("cluster memory footprint (RSS of host processes; working set of pods, kubelet summary API)")
    for name, value in [*host.items(), *sorted(pod.items())]:
        print(f"  {name:<{width}} {value / MIB:8.0f} MiB")
    print(f"  {'host processes':<{width}} {sum(host.values()) / MIB:8.0f} MiB")
    print(f"  {'pods':<{width}} {sum(pod.values()) / MIB:8.0f} MiB")
    print(f"  {'total':<{width}} {(sum(host.values()) + sum(pod.values())) / MIB:8.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
