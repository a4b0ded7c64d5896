"""What a real node changes on this host, recorded first so teardown undoes exactly that.

A kubelet, kube-proxy, containerd and the CNI plugins change the machine they run on:
sysctls (`vm.overcommit_memory`, `kernel.panic*`, `net.ipv4.ip_forward`), iptables
chains (v4 and v6), mounts under their state folders and `/run/netns`, cgroups named
`kubepods` under every controller, links (the bridge, the pods' veths) and folders
outside their roots. The `HostSnapshot` records the before-state (written to disk, so a
`down` in a later process can restore it) and `restore()` removes only what appeared
since and is ours: iptables rules and chains of the node's own chain families (`KUBE-`,
`KAITO-`, `CNI-`) that were not there before, one rule at a time, so a rule somebody
else added meanwhile stays; cgroup folders that did not exist; sysctls set back to their
recorded values. Nothing is restored from a whole earlier dump.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
from collections import Counter
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
# The chain families the node's programs make: kubelet and kube-proxy (KUBE-), our pod
# guard (KAITO-), the CNI plugins (CNI-). Only rules in or jumping to these are removed.
OWNED_CHAIN_PREFIXES = ("KUBE-", "KAITO-", "CNI-")
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
BRIDGE_LINK = "cni0"


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


def iptables_dump(save_command: str) -> str:
    if shutil.which(save_command) is None:
        return ""
    return _run([save_command]).stdout


def mount_points() -> list[str]:
    points = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1:
                points.append(fields[1].replace("\\040", " "))
    return points


def node_cgroups() -> list[str]:
    """Every cgroup folder named like the node's (`kubepods`, `k8s.io`) and below it."""
    found: list[str] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for controller in sorted(CGROUP_ROOT.iterdir()):
        for name in NODE_CGROUPS:
            top = controller / name
            if top.is_dir():
                found.append(str(top))
                found += sorted(str(p) for p in top.rglob("*") if p.is_dir())
    return found


def links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


# ---- iptables, pure -------------------------------------------------------------------
@dataclass
class IptablesTable:
    chains: dict[str, str] = field(default_factory=dict)  # name -> policy ("-": user chain)
    rules: list[str] = field(default_factory=list)  # "-A CHAIN ..." as iptables-save prints

    @property
    def is_empty(self) -> bool:
        """Only built-in chains accepting everything, no rules: as if it did not exist."""
        return not self.rules and all(
            name in BUILTIN_CHAINS and policy == "ACCEPT" for name, policy in self.chains.items())


def parse_iptables(dump: str) -> dict[str, IptablesTable]:
    """An iptables-save text as table -> chains and rules (comments and counters dropped)."""
    tables: dict[str, IptablesTable] = {}
    current: IptablesTable | None = None
    for line in dump.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], IptablesTable())
        elif current is None:
            continue
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            current.chains[name] = rest.split(" ", 1)[0] if rest else "-"
        elif line.startswith("-A "):
            current.rules.append(line)
    return tables


def normalised_iptables(dump: str) -> dict[str, dict[str, object]]:
    """What a dump means, to compare two: counters stripped, empty tables left out."""
    return {name: {"chains": dict(sorted(table.chains.items())), "rules": sorted(table.rules)}
            for name, table in sorted(parse_iptables(dump).items()) if not table.is_empty}


def _is_owned(chain: str | None) -> bool:
    return chain is not None and chain.startswith(OWNED_CHAIN_PREFIXES)


def _rule_chain_and_target(rule: str) -> tuple[str, str | None]:
    words = rule.split()
    target = None
    for flag in ("-j", "-g"):
        if flag in words[2:]:
            index = words.index(flag, 2)
            if index + 1 < len(words):
                target = words[index + 1]
    return words[1], target


def iptables_cleanup(before: str, now: str) -> dict[str, list[str]]:
    """Per table, the iptables-restore lines (``--noflush``) that remove what the node made:
    rules added since ``before`` that sit in or jump to an owned chain, then the owned
    chains that did not exist before. Rules and chains anybody else added stay."""
    old, new = parse_iptables(before), parse_iptables(now)
    plan: dict[str, list[str]] = {}
    for name, table in new.items():
        previous = old.get(name, IptablesTable())
        new_chains = [c for c in table.chains if c not in previous.chains and _is_owned(c)]
        kept = Counter(previous.rules)
        deletes: list[str] = []
        for rule in table.rules:
            if kept[rule] > 0:
                kept[rule] -= 1
                continue
            chain, target = _rule_chain_and_target(rule)
            if chain in new_chains:
                continue  # goes with its chain's flush
            if _is_owned(chain) or _is_owned(target):
                deletes.append("-D" + rule[2:])
        lines = deletes + [f"-F {c}" for c in new_chains] + [f"-X {c}" for c in new_chains]
        if lines:
            plan[name] = lines
    return plan


@dataclass
class HostSnapshot:
    """The host as it was before a node started (saved as JSON beside the node)."""

    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)  # save command -> dump
    existing_paths: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            sysctls=read_sysctls(),
            iptables={save: iptables_dump(save) for save, _, _ in IPTABLES_COMMANDS},
            existing_paths=[p for p in WATCHED_PATHS if os.path.lexists(p)],
            mounts=mount_points(),
            links=links(),
            cgroups=node_cgroups(),
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
        """Undoes what the node made; returns what was undone (for logs)."""
        done: list[str] = []
        done += self._unmount(node_dirs)
        done += self._remove_iptables()
        done += self._restore_sysctls()
        done += self._remove_links()
        done += self._remove_cgroups()
        done += self._remove_paths()
        return done

    def _unmount(self, node_dirs: tuple[Path, ...]) -> list[str]:
        before = set(self.mounts)
        roots = [str(d) for d in node_dirs] + [p for p in WATCHED_PATHS]
        added = [m for m in mount_points() if m not in before
                 and any(m == r or m.startswith(r.rstrip("/") + "/") for r in roots)]
        done = []
        for point in sorted(set(added), key=len, reverse=True):  # deepest first
            result = _run(["umount", "-l", point])
            if result.returncode == 0:
                done.append(f"unmounted {point}")
        return done

    def _remove_iptables(self) -> list[str]:
        done = []
        for save, restore, base in IPTABLES_COMMANDS:
            if shutil.which(save) is None:
                continue
            plan = iptables_cleanup(self.iptables.get(save, ""), iptables_dump(save))
            for table, lines in plan.items():
                script = f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n"
                result = _run([restore, "-w", "--noflush"], input_text=script)
                if result.returncode != 0:
                    # One at a time, so one rule that no longer matches spoils nothing else.
                    for line in lines:
                        single = _run([base, "-w", "-t", table, *shlex.split(line)])
                        if single.returncode != 0:
                            log.warning("iptables cleanup step failed", extra={
                                "command": base, "table": table, "step": line,
                                "error": single.stderr.strip()})
                done.append(f"{base} -t {table}: {len(lines)} rules and chains removed")
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
        done: list[str] = []
        new = set(links()) - set(self.links)
        if BRIDGE_LINK not in new:
            return done
        # The pods' veth ends on our bridge first (the pods are gone by now), then it.
        for link in sorted(new - {BRIDGE_LINK}):
            master = Path(f"/sys/class/net/{link}/master")
            if master.exists() and master.resolve().name == BRIDGE_LINK and \
                    _run(["ip", "link", "delete", link]).returncode == 0:
                done.append(f"link {link} deleted")
        if _run(["ip", "link", "delete", BRIDGE_LINK]).returncode == 0:
            done.append(f"link {BRIDGE_LINK} deleted")
        return done

    def _remove_cgroups(self) -> list[str]:
        done: list[str] = []
        before = set(self.cgroups)
        new = [Path(p) for p in node_cgroups() if p not in before]
        # cgroup folders are removed with rmdir, deepest first.
        for folder in sorted(new, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError as error:
                log.warning("cgroup not removed", extra={"cgroup": str(folder),
                                                         "error": str(error)})
                continue
            if folder.name in NODE_CGROUPS:
                done.append(f"cgroup {folder} removed")
        return done

    def _remove_paths(self) -> list[str]:
        done = []
        for path in WATCHED_PATHS:
            if path not in self.existing_paths and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path}")
        return done
