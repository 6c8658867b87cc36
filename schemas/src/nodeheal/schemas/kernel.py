"""The kernel / journal log classes the diagnoser names, with their default root-cause category.

The class list of `docs/design.md` ("Kernel-log classes"). The ext4/xfs classes are
"hardware or kernel": the diagnoser looks back for I/O errors before them; their default here is
`kernel`, and `LOOKBACK_CLASSES` marks them.
"""

from __future__ import annotations

from typing import Literal, get_args

Category = Literal["hardware", "kernel", "ops", "software", "network", "unknown"]

KernelLogClass = Literal[
    "mce_hardware_error",
    "mce_fatal_panic",
    "edac_memory_ce",
    "ghes_cper_hardware_error",
    "nvme_disk_io_error",
    "soft_lockup",
    "hard_lockup",
    "hung_task",
    "rcu_stall",
    "kernel_bug",
    "kernel_panic",
    "kernel_oops_null_deref",
    "kernel_oops_gpf",
    "kernel_oops_divide_error",
    "unregister_netdevice",
    "vmcore_crash_sys_summary",
    "ext4_error",
    "ext4_readonly_remount",
    "xfs_error",
    "oom_killer",
    "too_many_open_files",
    "conntrack_full",
    "page_allocation_failure",
    "disk_full_eviction",
    "kubelet_unhealthy_pleg",
    "kubelet_down",
    "container_runtime_down",
    "planned_shutdown_reboot",
]

KERNEL_LOG_CLASSES: tuple[str, ...] = get_args(KernelLogClass)

DEFAULT_CATEGORY: dict[str, Category] = {
    "mce_hardware_error": "hardware",
    "mce_fatal_panic": "hardware",
    "edac_memory_ce": "hardware",
    "ghes_cper_hardware_error": "hardware",
    "nvme_disk_io_error": "hardware",
    "soft_lockup": "kernel",
    "hard_lockup": "kernel",
    "hung_task": "kernel",
    "rcu_stall": "kernel",
    "kernel_bug": "kernel",
    "kernel_panic": "kernel",
    "kernel_oops_null_deref": "kernel",
    "kernel_oops_gpf": "kernel",
    "kernel_oops_divide_error": "kernel",
    "unregister_netdevice": "kernel",
    "vmcore_crash_sys_summary": "kernel",
    "ext4_error": "kernel",
    "ext4_readonly_remount": "kernel",
    "xfs_error": "kernel",
    "oom_killer": "software",
    "too_many_open_files": "software",
    "conntrack_full": "software",
    "page_allocation_failure": "software",
    "disk_full_eviction": "software",
    "kubelet_unhealthy_pleg": "software",
    "kubelet_down": "software",
    "container_runtime_down": "software",
    "planned_shutdown_reboot": "ops",
}

LOOKBACK_CLASSES: frozenset[str] = frozenset({"ext4_error", "ext4_readonly_remount", "xfs_error"})
"""Hardware when I/O errors on the same device come before them, kernel otherwise."""

assert set(DEFAULT_CATEGORY) == set(KERNEL_LOG_CLASSES)
