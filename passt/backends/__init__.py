"""What carries frames to the guest or namespace: the tap device, QEMU's stream socket, vhost-user."""
