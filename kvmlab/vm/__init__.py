"""Launch and reap QEMU: the lab VM (booted, or resumed from its shape's saved boot), its
libvirt twin, the guest agent, and the probe that asks a build what it can do.
"""
