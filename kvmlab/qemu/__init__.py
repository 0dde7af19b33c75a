"""What a QEMU build is: the builds kvmlab can use and how they are installed, what a
build's QMP schema says it can do, its trace points, and the disk images its tools
make.
"""
