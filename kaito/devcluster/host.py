"""What a real node changes on this host, recorded first so teardown can put it back.

A kubelet, kube-proxy, containerd and the CNI plugins change the machine they run on:
sysctls (`vm.overcommit_memory`, `kernel.panic*`, `net.ipv4.ip_forward`), iptables
chains in every table (v4 and v6), mounts under their state folders and `/run/netns`,
cgroups named `kubepods` under every controller, and folders outside their roots. The
`HostSnapshot` records the before-state (it is written to disk, so a `down` in a later
process can restore it) and `restore()` undoes each kind of change. Nothing here touches
anything it did not see change.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Sysctls the kubelet, kube-proxy or the bridge plugin are known to set.
WATCHED_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Paths outside a node's own folder that kubelet and CNI create when missing.
WATCHED_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/usr/libexec/kubernetes",
    "/var/lib/cni",
    "/run/netns",
    "/etc/cni",
    "/run/containerd",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
NODE_CGROUPS = ("kubepods", "k8s.io")
IPTABLES_COMMANDS = (("iptables-save", "iptables-restore", "iptables"),
                     ("ip6tables-save", "ip6tables-restore", "ip6tables"))


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls(names: tuple[str, ...] = WATCHED_SYSCTLS) -> dict[str, str]:
    values = {}
    for name in names:
        try:
            values[name] = _sysctl_path(name).read_text().strip()
        except OSError:
            continue  # not on this kernel (e.g. conntrack not loaded yet)
    return values


def _run(argv: list[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False)


def _iptables_dump(save_command: str) -> str:
    if shutil.which(save_command) is None:
        return ""
    return _run([save_command]).stdout


def _tables_in(dump: str) -> list[str]:
    return [line[1:].strip() for line in dump.splitlines() if line.startswith("*")]


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1:
                points.append(fields[1].replace("\\040", " "))
    return points


@dataclass
class HostSnapshot:
    """The host as it was before a node started (saved as JSON beside the node)."""

    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)  # save command -> dump
    existing_paths: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            sysctls=read_sysctls(),
            iptables={save: _iptables_dump(save) for save, _, _ in IPTABLES_COMMANDS},
            existing_paths=[p for p in WATCHED_PATHS if os.path.lexists(p)],
            mounts=_mount_points(),
            links=sorted(os.listdir("/sys/class/net")),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> HostSnapshot | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    # ---- restore -------------------------------------------------------------
    def restore(self, *, node_dirs: tuple[Path, ...] = ()) -> list[str]:
        """Undoes every recorded kind of change; returns what was restored (for logs)."""
        done: list[str] = []
        done += self._unmount(node_dirs)
        done += self._restore_iptables()
        done += self._restore_sysctls()
        done += self._remove_links()
        done += self._remove_cgroups()
        done += self._remove_paths()
        return done

    def _unmount(self, node_dirs: tuple[Path, ...]) -> list[str]:
        before = set(self.mounts)
        roots = [str(d) for d in node_dirs] + [p for p in WATCHED_PATHS]
        added = [m for m in _mount_points() if m not in before
                 and any(m == r or m.startswith(r.rstrip("/") + "/") for r in roots)]
        done = []
        for point in sorted(set(added), key=len, reverse=True):  # deepest first
            result = _run(["umount", "-l", point])
            if result.returncode == 0:
                done.append(f"unmounted {point}")
        return done

    def _restore_iptables(self) -> list[str]:
        done = []
        for save, restore, base in IPTABLES_COMMANDS:
            if shutil.which(save) is None:
                continue
            before = self.iptables.get(save, "")
            now = _iptables_dump(save)
            if _rules_only(now) == _rules_only(before):
                continue
            if before.strip():
                result = _run([restore], input_text=before)
                if result.returncode != 0:
                    log.warning("iptables restore failed",
                                extra={"command": restore, "error": result.stderr.strip()})
                    continue
            # Tables that did not exist before (and so are not in the dump) are emptied.
            for table in set(_tables_in(now)) - set(_tables_in(before)):
                _run([base, "-t", table, "-F"])
                _run([base, "-t", table, "-X"])
            done.append(f"{base} rules restored")
        return done

    def _restore_sysctls(self) -> list[str]:
        done = []
        now = read_sysctls(tuple(self.sysctls))
        for name, value in self.sysctls.items():
            if now.get(name) != value:
                try:
                    _sysctl_path(name).write_text(value)
                    done.append(f"{name}={value}")
                except OSError as error:
                    log.warning("sysctl restore failed", extra={"sysctl": name,
                                                                "error": str(error)})
        return done

    def _remove_links(self) -> list[str]:
        done = []
        for link in sorted(set(os.listdir("/sys/class/net")) - set(self.links)):
            # The bridge and the pods' veth ends (the pods are gone by now).
            is_node_link = link == "cni0" or link.startswith("veth")
            if is_node_link and _run(["ip", "link", "delete", link]).returncode == 0:
                done.append(f"link {link} deleted")
        return done

    def _remove_cgroups(self) -> list[str]:
        done: list[str] = []
        if not CGROUP_ROOT.is_dir():
            return done
        for controller in sorted(CGROUP_ROOT.iterdir()):
            for name in NODE_CGROUPS:
                top = controller / name
                if not top.is_dir():
                    continue
                # cgroup folders are removed with rmdir, deepest first.
                for folder in sorted((p for p in top.rglob("*") if p.is_dir()),
                                     key=lambda p: len(p.parts), reverse=True):
                    try:
                        folder.rmdir()
                    except OSError:
                        pass
                try:
                    top.rmdir()
                    done.append(f"cgroup {top} removed")
                except OSError as error:
                    log.warning("cgroup not removed", extra={"cgroup": str(top),
                                                             "error": str(error)})
        return done

    def _remove_paths(self) -> list[str]:
        done = []
        for path in WATCHED_PATHS:
            if path not in self.existing_paths and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path}")
        return done


def _rules_only(dump: str) -> list[str]:
    """A dump without its comments and packet counters, to compare two dumps."""
    lines = []
    for line in dump.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.split(" [", 1)[0]
        lines.append(line)
    return lines
