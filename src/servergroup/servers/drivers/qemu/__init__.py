"""The qemu server driver: real Linux micro-VMs under QEMU, their guest image and their exec port."""
