#!/usr/bin/env bash
# Installs the Debian packages the test tiers use, only when missing:
# docker-registry (a real OCI registry on loopback), apache2-utils (htpasswd for its
# basic auth) and prometheus (the server and promtool: the observability test scrapes the
# controller with a real Prometheus and checks the alert rules with promtool); and for
# the real-node tier: containerd, runc and the CNI plugins (the node's pods run for
# real), iptables and conntrack (kube-proxy), debootstrap and buildah (the images are
# built here without a registry of base images).
set -euo pipefail
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v buildah >/dev/null || need+=(buildah)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2 || true
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
