//! QEMU/TCG harness for the fleet kernels (5.10, 6.1, 6.12); see the vm-tests issue.
