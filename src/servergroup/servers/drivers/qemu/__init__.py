"""The qemu server driver: Linux micro-VMs under QEMU, their guest image and exec port."""
