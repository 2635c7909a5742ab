"""Command lines and config files of each cluster component, in start order.

Bindings: etcd, the controller-manager, the scheduler and every health/metrics port listen on
127.0.0.1; the apiserver (6443) and the kubelet (10250) listen on the node address on our own
bridge, which pods and the apiserver must reach. containerd is a private instance (own config,
root, state, runc root and socket under /run/disagg) so it never touches a system containerd that
Docker may be using; images imported into its ``k8s.io`` namespace persist in the cache across runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import config
from .config import Settings
from .network import cni_conf_dir

FEATURE_GATES: dict[str, bool] = {}


def containerd(settings: Settings) -> list[str]:
    run = settings.run / "containerd"
    run.mkdir(parents=True, exist_ok=True)
    settings.containerd_root.mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    toml = f"""\
version = 2
root = "{settings.containerd_root}"
state = "{run / "state"}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{settings.containerd_socket}"

[ttrpc]
  address = "{settings.containerd_socket}.ttrpc"

[{cri}]
  sandbox_image = "{config.PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  max_container_log_line_size = 16384
  # These machines withhold CAP_SYS_RESOURCE even from root, so no process may lower its
  # oom_score_adj below 0; the kubelet asks -998 for sandboxes (runc then dies with "can't get
  # final child's PID from pipe: EOF"). Clamp container scores to containerd's own (0).
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{run / "runc"}"

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf_dir(settings)}"
  max_conf_num = 1

[{cri}.registry]
  config_path = ""
"""
    path = run / "config.toml"
    path.write_text(toml)
    return ["/usr/bin/containerd", "--config", str(path)]


CONTAINERD_ENV = {
    # No registry is reachable and none may be contacted: every pull goes to a closed loopback
    # port (a proxy), so a pod with a missing image fails at once with ErrImagePull and no DNS
    # query or connection ever leaves the machine. Images are imported with `load-image`.
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "",
}


def etcd(settings: Settings) -> list[str]:
    data = settings.state / "etcd"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    return [
        str(settings.tool("etcd")),
        "--name=disagg",
        f"--data-dir={data}",
        f"--listen-client-urls=http://127.0.0.1:{settings.etcd_port}",
        f"--advertise-client-urls=http://127.0.0.1:{settings.etcd_port}",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=disagg=http://127.0.0.1:2380",
        "--listen-metrics-urls=http://127.0.0.1:2381",
        "--quota-backend-bytes=2147483648",
        "--unsafe-no-fsync=true",  # test cluster: speed over durability
        "--log-level=warn",
    ]


def apiserver(settings: Settings) -> list[str]:
    p = settings.pki
    return [
        str(settings.tool("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{settings.etcd_port}",
        f"--bind-address={settings.node_ip}",
        f"--advertise-address={settings.node_ip}",
        f"--secure-port={settings.apiserver_port}",
        f"--service-cluster-ip-range={settings.service_cidr}",
        f"--tls-cert-file={p / 'apiserver.crt'}",
        f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={p / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        # Aggregation layer (front proxy) for prometheus-adapter and other API services.
        f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
        "--enable-aggregator-routing=true",
        "--profiling=false",
        "--v=1",
    ]


def _kube_client_flags(settings: Settings, user: str) -> list[str]:
    kubeconfig = settings.pki / f"{user}.kubeconfig"
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager(settings: Settings) -> list[str]:
    p = settings.pki
    return [
        str(settings.tool("kube-controller-manager")),
        *_kube_client_flags(settings, "controller-manager"),
        f"--cluster-signing-cert-file={p / 'ca.crt'}",
        f"--cluster-signing-key-file={p / 'ca.key'}",
        f"--root-ca-file={p / 'ca.crt'}",
        f"--service-account-private-key-file={p / 'sa.key'}",
        f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
        f"--client-ca-file={p / 'ca.crt'}",
        "--use-service-account-credentials=true",
        "--controllers=*,bootstrapsigner,tokencleaner",
        f"--service-cluster-ip-range={settings.service_cidr}",
        "--horizontal-pod-autoscaler-sync-period=5s",
    ]


def scheduler(settings: Settings) -> list[str]:
    return [str(settings.tool("kube-scheduler")), *_kube_client_flags(settings, "scheduler")]


def kubelet(settings: Settings) -> list[str]:
    p = settings.pki
    root = settings.state / "kubelet"
    root.mkdir(parents=True, exist_ok=True)
    kubelet_config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": settings.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(p / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(p / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(p / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{settings.containerd_socket}",
        "failSwapOn": False,
        "resolvConf": "",
        "clusterDNS": [settings.node_ip],
        "clusterDomain": "cluster.local",
        "maxPods": 110,
        "serializeImagePulls": False,
        "podPidsLimit": 4096,
        "evictionHard": {
            "memory.available": "200Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
        },
        "imageGCHighThresholdPercent": 98,
        "imageGCLowThresholdPercent": 95,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "featureGates": FEATURE_GATES,
    }
    path = settings.state / "kubelet-config.json"
    path.write_text(json.dumps(kubelet_config, indent=2))
    return [
        str(settings.tool("kubelet")),
        f"--config={path}",
        f"--kubeconfig={p / 'kubelet.kubeconfig'}",
        f"--root-dir={root}",
        f"--hostname-override={settings.node_name}",
        f"--node-ip={settings.node_ip}",
        "--v=1",
    ]


def kube_proxy(settings: Settings) -> list[str]:
    proxy_config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(settings.pki / "kube-proxy.kubeconfig")},
        "hostnameOverride": settings.node_name,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": settings.pod_cidr,
        "nodePortAddresses": [f"{settings.node_ip}/32"],
        # Leave the host's conntrack sysctls alone (a VM may not allow writing them).
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
    }
    path = settings.state / "kube-proxy-config.json"
    path.write_text(json.dumps(proxy_config, indent=2))
    return [str(settings.tool("kube-proxy")), f"--config={path}", "--v=1"]


COREDNS_READY = "127.0.0.1:8181"

COREDNS_RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:coredns"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:coredns",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:coredns"}
        ],
    },
]
"""What the CoreDNS ``kubernetes`` plugin reads, granted to its client certificate's user."""


def coredns(settings: Settings) -> list[str]:
    """Cluster DNS as a host process on the node address (pods' nameserver).

    Only ``cluster.local`` and the reverse zones are served; there is deliberately no ``forward``
    plugin, so a query for any other name is refused here and never leaves the machine.
    """
    corefile = settings.state / "Corefile"
    kubeconfig = settings.pki / "coredns.kubeconfig"
    corefile.write_text(
        f"""cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {settings.node_ip}
    errors
    ready {COREDNS_READY}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} disagg
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""
    )
    return [str(settings.tool("coredns")), "-conf", str(corefile)]


def ctr(settings: Settings, *args: str) -> list[str]:
    return ["/usr/bin/ctr", "--address", str(settings.containerd_socket), "-n", "k8s.io", *args]


def image_archive(settings: Settings) -> Path:
    """The pause image archive, keyed by its tag (``install`` writes it, ``up`` imports it)."""
    return settings.cache / "images" / f"pause-{config.PAUSE_IMAGE.rsplit(':', 1)[1]}.tar"
