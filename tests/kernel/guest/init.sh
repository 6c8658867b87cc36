#!/bin/busybox sh
# nodeheal kernel test tier: PID 1 of the guest (see tests/kernel/guest.py).
#
# Every boot: load ramoops into the reserved RAM, print what pstore holds (gzip + base64 between
# =====NODEHEAL markers on the serial console), erase it, then run the next step of nodeheal.plan
# (`null`, `softlockup`, `hung`, optionally `+kdump`), or power off when the plan is done. The step
# counter lives in the reserved page after the ramoops region (devmem), which a warm reset keeps.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/kernel/printk
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
say() { echo "=====NODEHEAL $*"; }
dump() {  # $1 = label, $2 = file: gzip + base64 between markers on the serial console
	say BEGIN "$1" "$(wc -c < "$2")"
	gzip -c "$2" | base64
	say END "$1"
}

STEP_ADDR=0xE100000; MAGIC=0x4E480000
if [ -e /proc/vmcore ]; then  # the kdump capture kernel
	vmcore-dmesg /proc/vmcore > /vmcore-dmesg.txt
	say VMCORE-DMESG "rc=$?"
	dump vmcore-dmesg.txt /vmcore-dmesg.txt
	if [ "$(arg nodeheal.advance)" = 1 ]; then  # kdump only: pstore stays empty, so the step ends here
		word=$(devmem $STEP_ADDR 32)
		say BOOT "$(cat /proc/sys/kernel/random/boot_id)" step=$((word & 0xFFFF))
		say REPORTED 0
		devmem $STEP_ADDR 32 $((word + 1))
	fi
	reboot -f   # warm reset: the first kernel boots again and finds pstore
fi

insmod /lib/modules/reed_solomon.ko
insmod /lib/modules/ramoops.ko mem_address=0xE000000 mem_size=0x100000 record_size=0x20000 ecc=0
mount -t pstore pstore /sys/fs/pstore
word=$(devmem $STEP_ADDR 32)
step=0
[ $((word & 0xFFFF0000)) -eq $((MAGIC)) ] && step=$((word & 0xFFFF))
say BOOT "$(cat /proc/sys/kernel/random/boot_id)" step=$step
n=0
for f in /sys/fs/pstore/*; do
	[ -f "$f" ] || continue
	dump "pstore/${f##*/}" "$f"
	rm "$f"
	n=$((n+1))
done
if [ "$n" -gt 0 ]; then
	say REPORTED "$n"
	step=$((step + 1))
fi
plan=$(arg nodeheal.plan)
crash=$(echo "$plan" | cut -d, -f$((step + 1)))
if [ -z "$crash" ]; then
	say DONE
	poweroff -f
fi
devmem $STEP_ADDR 32 $((MAGIC + step))
capture="console=ttyS0 quiet reset_devices nr_cpus=1 panic=1 irqpoll cryptomgr.notests"
case "$crash" in
*+kdump)  # pstore first (crash_kexec_post_notifiers on the command line), then kdump
	crash=${crash%+kdump}
	kexec_crash_load /boot/vmlinuz /boot/capture.cpio "$capture" \
		&& say KDUMP-LOADED "$(cat /sys/kernel/kexec_crash_loaded)" ;;
*+kdumponly)  # kdump's default: an oops goes straight to the capture kernel, pstore gets nothing
	crash=${crash%+kdumponly}
	echo N > /sys/module/kernel/parameters/crash_kexec_post_notifiers
	kexec_crash_load /boot/vmlinuz /boot/capture.cpio "$capture nodeheal.advance=1" \
		&& say KDUMP-LOADED "$(cat /sys/kernel/kexec_crash_loaded)" ;;
esac
say CRASH "$crash" step=$step
# only now: kexec_file_load hashes ~18 MB with generic sha256, which under TCG is itself a soft lockup at 1 s
echo 1 > /proc/sys/kernel/hung_task_timeout_secs
echo 1 > /proc/sys/kernel/watchdog_thresh
insmod /lib/modules/nodeheal_crash.ko
case "$crash" in
	hung) echo hung > /proc/nodeheal_crash & ;;
	*) echo "$crash" > /proc/nodeheal_crash ;;
esac
sleep 60
say SURVIVED
poweroff -f
