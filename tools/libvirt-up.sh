#!/usr/bin/env bash
# Start a real libvirtd for kvmlab's libvirt backend tests (idempotent; run as root).
# Debian 12: libvirtd refuses to start without the libvirt-qemu user; QEMU runs as root
# with no security driver (no AppArmor/SELinux labelling inside this sandbox).
set -euo pipefail
getent passwd libvirt-qemu >/dev/null || useradd -r -M -s /usr/sbin/nologin libvirt-qemu
mkdir -p /etc/libvirt /var/log/libvirt/qemu /var/lib/libvirt/qemu /run/libvirt /var/cache/libvirt
conf=/etc/libvirt/qemu.conf
if ! grep -q '^# kvmlab' "$conf" 2>/dev/null; then
  cat > "$conf" <<'CONF'
# kvmlab: QEMU as root, no security driver (test machines without AppArmor/SELinux)
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
CONF
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
  libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.2
done
echo "libvirtd did not answer on qemu:///system" >&2
exit 1
