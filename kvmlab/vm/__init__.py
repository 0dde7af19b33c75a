"""Launch and reap QEMU: the lab VM, its libvirt twin, the guest agent, and the probe
that asks a build what it can do.
"""
