// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/uaccess.h>
#include <linux/string.h>

static noinline void nodeheal_null_deref(void)
{
	int *volatile p = NULL;
	*p = 1;
}

static noinline void nodeheal_spin_forever(void)
{
	preempt_disable();
	for (;;)
		cpu_relax();
}

static noinline void nodeheal_block_forever(void)
{
	for (;;) {
		set_current_state(TASK_UNINTERRUPTIBLE);
		schedule();
	}
}

static ssize_t nodeheal_crash_write(struct file *f, const char __user *buf, size_t len, loff_t *off)
{
	char cmd[16] = {};

	if (copy_from_user(cmd, buf, min(len, sizeof(cmd) - 1)))
		return -EFAULT;
	if (!strncmp(cmd, "null", 4))
		nodeheal_null_deref();
	else if (!strncmp(cmd, "softlockup", 10))
		nodeheal_spin_forever();
	else if (!strncmp(cmd, "hung", 4))
		nodeheal_block_forever();
	else
		return -EINVAL;
	return len;
}

static const struct proc_ops nodeheal_crash_ops = {
	.proc_write = nodeheal_crash_write,
};

static int __init nodeheal_crash_init(void)
{
	return proc_create("nodeheal_crash", 0200, NULL, &nodeheal_crash_ops) ? 0 : -ENOMEM;
}

static void __exit nodeheal_crash_exit(void)
{
	remove_proc_entry("nodeheal_crash", NULL);
}

module_init(nodeheal_crash_init);
module_exit(nodeheal_crash_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("nodeheal test tier: real NULL dereference, soft lockup and hung task on demand");
