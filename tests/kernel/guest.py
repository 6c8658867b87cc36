"""A real Debian cloud kernel under qemu (software emulation) that crashes on purpose and hands back
what it left in pstore and kdump.

What it does, all bounded and all cached under `cache_dir()` (never installed on the host):

1. `ensure_tools()`: qemu-system-x86, busybox-static and cpio from the Debian registry with apt-get
   when they are missing (`apt-cache policy` first, `apt-get update` once when there is no candidate).
2. `ensure_kernel()`: resolves `linux-image-cloud-amd64` to its versioned image package, `apt-get
   download`s it and the matching `linux-headers-<ver>-cloud-amd64`, `linux-headers-<ver>-common`,
   `linux-kbuild-<major>` and `kexec-tools`, and unpacks them with `dpkg-deb -x`.
3. `build_initramfs()`: builds `guest/nodeheal_crash.c` (a module that dereferences NULL, spins with
   preemption off, or blocks in D state on request) against those headers, a static
   `guest/kexec_crash_load.c` (kexec_file_load(2); Debian's kexec needs libxenctrl) and two
   uncompressed cpio archives with busybox and `guest/init.sh`: the main one and the kdump capture one
   (vmcore-dmesg from kexec-tools with the host's libc).
4. `run_plan()`: boots the kernel with `qemu-system-x86_64 -accel tcg` (no network device at all: the
   evidence comes back on the serial console) and a plan such as `null+kdump,softlockup`. The guest
   crashes, warm-resets (RAM, and with it ramoops, survives), prints the pstore files (gzip + base64
   between markers), erases them and goes on with the next step; `+kdump` loads a capture kernel
   first, which writes vmcore-dmesg.txt the same way before resetting. The step counter lives in a
   reserved page (`devmem`), next to the ramoops region. Every run is bounded by `timeout` and killed
   by pid.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

GUEST_SRC = Path(__file__).resolve().parent / "guest"
TOOLS = {  # binary → the Debian package that brings it
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "gcc": "gcc",
    "make": "make",
}
RAMOOPS_ADDR = 0xE000000  # the init script uses the same addresses: 1 MiB ramoops, then the step counter
APT_TIMEOUT_S = 300
RUN_TIMEOUT_S = 420

_BEGIN = re.compile(r"=====NODEHEAL BEGIN (?P<name>\S+) (?P<size>\d+)\r?\n(?P<body>.*?)=====NODEHEAL END", re.S)
_MARK = re.compile(r"=====NODEHEAL (?P<what>BOOT|CRASH|REPORTED|DONE|KDUMP-LOADED|VMCORE-DMESG)\b ?(?P<rest>[^\r\n]*)")


class KernelTierUnavailableError(Exception):
    """The tier cannot run here (no qemu and no way to install it, no kernel package, no compiler)."""


def cache_dir() -> Path:
    return Path(os.environ.get("NODEHEAL_KERNEL_CACHE", Path.home() / ".cache" / "nodeheal-kernel"))


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Held while the tools are installed and the cache is filled: two test runs (or two xdist workers) on
    one machine never download, unpack or build into it at once; the second finds it filled."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _run(
    args: list[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    failure: type[Exception] = KernelTierUnavailableError,
) -> str:
    """Run a bounded command; a failure raises `failure` (a skip for setup, an error for our own build)."""
    try:
        proc = subprocess.run(
            ["timeout", "-k", "5", str(int(timeout)), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        msg = f"cannot run {args[0]}: {exc}"
        raise KernelTierUnavailableError(msg) from exc
    if proc.returncode != 0:
        msg = f"{' '.join(args)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}"
        raise failure(msg)
    return proc.stdout


def _candidate(package: str) -> str | None:
    out = _run(["apt-cache", "policy", package], timeout=60)
    match = re.search(r"Candidate:\s*(\S+)", out)
    return match.group(1) if match and match.group(1) != "(none)" else None


_updated = False


def _apt_update_once() -> None:
    global _updated
    if not _updated:
        _run(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT_S)
        _updated = True


def ensure_tools() -> None:
    """qemu, busybox, cpio and a compiler on the host (installed from the Debian registry when missing)."""
    missing = [pkg for binary, pkg in TOOLS.items() if shutil.which(binary) is None]
    if "gcc" in missing:
        missing.append("libc6-dev")  # the static libc of the kexec loader
    for binary in ("dpkg-deb", "apt-get", "apt-cache", "timeout"):
        if shutil.which(binary) is None:
            msg = f"{binary} is not installed"
            raise KernelTierUnavailableError(msg)
    if not missing:
        return
    if os.geteuid() != 0:
        msg = f"{', '.join(missing)} missing and not root (apt-get install needs root)"
        raise KernelTierUnavailableError(msg)
    if any(_candidate(pkg) is None for pkg in missing):
        _apt_update_once()
    _run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        timeout=APT_TIMEOUT_S,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


@dataclass(frozen=True)
class Kernel:
    release: str  # 6.1.0-57-cloud-amd64
    version: str  # 6.1.192-3
    root: Path  # the unpacked packages

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release / "kernel"

    @property
    def headers(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.release}"

    @property
    def common_headers(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.release.rsplit('-', 2)[0]}-common"

    @property
    def config(self) -> str:
        return (self.root / "boot" / f"config-{self.release}").read_text()


def ensure_kernel() -> Kernel:
    """The current linux-image-cloud-amd64 and what building a module against it needs, unpacked."""

    def show() -> re.Match[str] | None:
        try:  # one apt-cache call (each costs seconds on a busy machine): the candidate and what it depends on
            out = _run(["apt-cache", "show", "--no-all-versions", "linux-image-cloud-amd64"], timeout=120)
        except KernelTierUnavailableError:
            return None
        return re.search(r"Depends: linux-image-(?P<release>\d[\w.-]*-cloud-amd64) \(= (?P<version>[^)\s]+)\)", out)

    resolved = cache_dir() / "resolved.json"  # apt's answer, kept for a day
    try:
        known = json.loads(resolved.read_text())
        if time.time() - resolved.stat().st_mtime < 86_400 and (cache_dir() / known["dir"] / ".unpacked").exists():
            return Kernel(release=known["release"], version=known["version"], root=cache_dir() / known["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    match = show()
    if match is None:
        _apt_update_once()
        match = show()
    if match is None:
        msg = "linux-image-cloud-amd64 is not known to apt (or does not name a versioned image package)"
        raise KernelTierUnavailableError(msg)
    release, version = match.group("release"), match.group("version")
    root = cache_dir() / f"{release}_{version}"
    done = root / ".unpacked"
    if done.exists():
        resolved.write_text(json.dumps({"release": release, "version": version, "dir": root.name}))
        return Kernel(release=release, version=version, root=root)
    major = ".".join(release.split(".")[:2])
    abi = release.rsplit("-", 2)[0]  # 6.1.0-57
    packages = [
        f"linux-image-{release}",
        f"linux-headers-{release}",
        f"linux-headers-{abi}-common",
        f"linux-kbuild-{major}",
        "kexec-tools",
    ]
    downloads = root / "debs"
    downloads.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", "-qq", *packages], timeout=APT_TIMEOUT_S, cwd=downloads)
    for deb in sorted(downloads.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)], timeout=APT_TIMEOUT_S)
        deb.unlink()
    # keep only the two modules the guest loads (the rest of lib/modules is ~90 MB)
    kernel = Kernel(release=release, version=version, root=root)
    keep = {kernel.modules / "lib/reed_solomon/reed_solomon.ko", kernel.modules / "fs/pstore/ramoops.ko"}
    for module in kernel.modules.rglob("*.ko"):
        if module not in keep:
            module.unlink()
    done.write_text(" ".join(packages) + "\n")
    resolved.write_text(json.dumps({"release": release, "version": version, "dir": root.name}))
    return Kernel(release=release, version=version, root=root)


def check_config(kernel: Kernel) -> None:
    """What the guest relies on (measured for the Debian 6.1 cloud kernel)."""
    config = kernel.config
    for option in ("CONFIG_PSTORE=y", "CONFIG_PSTORE_RAM=m", "CONFIG_KEXEC_FILE=y", "CONFIG_PROC_VMCORE=y"):
        if f"\n{option}\n" not in config:
            msg = f"{kernel.release} lacks {option}"
            raise KernelTierUnavailableError(msg)


def build_initramfs(kernel: Kernel) -> Path:
    """The test module, the kexec loader and the two cpio archives; rebuilt when guest/ changes."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(GUEST_SRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    out = kernel.root / "guest" / digest.hexdigest()[:12]
    if (out / "initrd.cpio").exists():
        return out / "initrd.cpio"
    for old in out.parent.glob("*") if out.parent.exists() else []:
        shutil.rmtree(old, ignore_errors=True)  # builds of earlier guest/ sources
    build = out / "build"
    shutil.copytree(GUEST_SRC, build)
    # Debian's header Makefile includes /usr/src/...-common by absolute path: name the unpacked one
    _run(
        ["make", "-C", str(kernel.headers), "-f", str(kernel.common_headers / "Makefile"), f"M={build}", "modules"],
        timeout=300,
        failure=RuntimeError,  # our module not building against the current kernel is a failure, not a skip
    )
    _run(
        ["gcc", "-O2", "-static", "-o", str(build / "kexec_crash_load"), str(build / "kexec_crash_load.c")],
        timeout=120,
        failure=RuntimeError,
    )

    def tree(root: Path) -> None:
        for sub in ("bin", "proc", "sys", "dev", "boot", "lib/modules", "lib64", "lib/x86_64-linux-gnu"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        busybox = shutil.which("busybox")
        assert busybox is not None
        shutil.copy2(busybox, root / "bin" / "busybox")
        shutil.copy2(build / "init.sh", root / "init")
        (root / "init").chmod(0o755)

    def cpio(root: Path, target: Path) -> None:
        names = "\n".join(str(p.relative_to(root)) for p in sorted(root.rglob("*"))) + "\n"
        proc = subprocess.run(
            ["timeout", "120", "cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=names.encode(),
            capture_output=True,
            check=True,
        )
        target.write_bytes(proc.stdout)

    capture = out / "capture"
    tree(capture)
    shutil.copy2(kernel.root / "sbin" / "vmcore-dmesg", capture / "bin" / "vmcore-dmesg")
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    loader = Path("/lib64/ld-linux-x86-64.so.2")
    if not libc.exists() or not loader.exists():
        msg = "the host's glibc is not where vmcore-dmesg expects it"
        raise KernelTierUnavailableError(msg)
    shutil.copy2(libc, capture / "lib" / "x86_64-linux-gnu" / "libc.so.6")
    shutil.copy2(loader.resolve(), capture / "lib64" / "ld-linux-x86-64.so.2")
    main = out / "main"
    tree(main)
    for module in ("lib/reed_solomon/reed_solomon.ko", "fs/pstore/ramoops.ko"):
        shutil.copy2(kernel.modules / module, main / "lib" / "modules" / Path(module).name)
    shutil.copy2(build / "nodeheal_crash.ko", main / "lib" / "modules" / "nodeheal_crash.ko")
    shutil.copy2(build / "kexec_crash_load", main / "bin" / "kexec_crash_load")
    shutil.copy2(kernel.vmlinuz, main / "boot" / "vmlinuz")
    cpio(capture, main / "boot" / "capture.cpio")
    cpio(main, out / "initrd.cpio.tmp")
    (out / "initrd.cpio.tmp").replace(out / "initrd.cpio")
    for tree_dir in (build, capture, main):
        shutil.rmtree(tree_dir)
    return out / "initrd.cpio"


@dataclass
class Capture:
    """What one crash step left behind, as the next boot found it."""

    step: int
    crash: str
    crashed_boot_id: str
    boot_id: str  # the boot that found it
    files: dict[str, bytes] = field(default_factory=dict)  # "pstore/dmesg-ramoops-0", "vmcore-dmesg.txt"


@dataclass
class PlanResult:
    plan: str
    captures: list[Capture]
    serial: str
    seconds: float


def cmdline(plan: str) -> str:
    return " ".join(
        [
            "console=ttyS0 quiet panic=-1 oops=panic softlockup_panic=1 hung_task_panic=1 nmi_watchdog=0",
            "cryptomgr.notests",  # the crypto self-tests are ~10 % of a boot under TCG
            f"memmap=2M${RAMOOPS_ADDR:#x}",  # ramoops (1 MiB) + the step counter page, kept out of the RAM map
            "crashkernel=160M crash_kexec_post_notifiers",  # kdump after pstore has written its record
            f"nodeheal.plan={plan}",
        ]
    )


def parse_serial(text: str, plan: str) -> list[Capture]:
    """The captures of a run, from the markers the guest's init prints."""
    steps = plan.split(",")
    captures: list[Capture] = []
    boots: list[tuple[str, int]] = []
    pending: dict[str, bytes] = {}
    events = sorted(
        [(m.start(), "mark", m) for m in _MARK.finditer(text)]
        + [(m.start(), "file", m) for m in _BEGIN.finditer(text)],
        key=lambda e: e[0],
    )
    for _pos, kind, match in events:
        if kind == "file":
            data = gzip.decompress(base64.b64decode("".join(match.group("body").split())))
            if len(data) != int(match.group("size")):
                msg = f"{match.group('name')}: {len(data)} bytes decoded, {match.group('size')} announced"
                raise AssertionError(msg)
            pending[match.group("name")] = data
            continue
        what, rest = match.group("what"), match.group("rest")
        if what == "BOOT":
            boot_id, _, step = rest.partition(" step=")
            boots.append((boot_id.strip(), int(step)))
        elif what == "REPORTED":
            boot_id, step = boots[-1]
            crashed = boots[-2][0] if len(boots) > 1 else ""  # the boot before this one crashed
            captures.append(
                Capture(
                    step=step, crash=steps[step].split("+")[0], crashed_boot_id=crashed, boot_id=boot_id, files=pending
                )
            )
            pending = {}
    return captures


@dataclass
class Control:
    """Shared between the runs and whoever waits for them: stop them all, or raise their priority."""

    cancel: threading.Event = field(default_factory=threading.Event)
    hurried: threading.Event = field(default_factory=threading.Event)
    groups: list[int] = field(default_factory=list)  # process groups of the running guests

    def hurry(self) -> None:
        """Back to normal priority (the guests were started niced, to use the suite's idle CPU)."""
        self.hurried.set()  # guests not started yet start at normal priority
        for group in list(self.groups):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PGRP, group, 0)


def run_plan(
    kernel: Kernel,
    initrd: Path,
    plan: str,
    *,
    workdir: Path,
    timeout_s: float = RUN_TIMEOUT_S,
    nice: int = 0,
    control: Control | None = None,
) -> PlanResult:
    """Boot, crash through every step of `plan`, collect the evidence; bounded and killed by pid."""
    control = control or Control()
    nice = 0 if control.hurried.is_set() else nice
    workdir.mkdir(parents=True, exist_ok=True)
    serial = workdir / f"serial-{re.sub(r'[^a-z0-9]+', '-', plan)}.log"
    args = [
        "nice", "-n", str(nice), "timeout", "-k", "5", str(int(timeout_s)),
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512M", "-smp", "1",
        "-display", "none", "-no-user-config", "-nodefaults", "-nic", "none",
        "-serial", f"file:{serial}", "-monitor", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", cmdline(plan),
    ]  # fmt: skip
    steps = [step for step in plan.split(",") if step]
    most_panics = len(steps) + 1  # one per step; more means the guest is crashing in a loop
    started = time.monotonic()
    # its own process group: `timeout` and qemu are killed together, by the group id of what we started
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    control.groups.append(proc.pid)
    looping = False
    try:
        while proc.poll() is None and time.monotonic() - started < timeout_s + 15 and not control.cancel.is_set():
            time.sleep(0.5)
            panics = serial.read_bytes().count(b"Kernel panic - not syncing") if serial.exists() else 0
            if panics > most_panics:  # e.g. a crash before ramoops was loaded: it would reboot until the timeout
                looping = True
                break
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        control.groups.remove(proc.pid)
    out = proc.stdout.read() if proc.stdout else b""
    seconds = time.monotonic() - started
    text = serial.read_text(encoding="latin-1") if serial.exists() else ""
    if looping or proc.returncode != 0 or "=====NODEHEAL DONE" not in text:
        why = f"panicked more than {most_panics} times" if looping else f"ended {proc.returncode}"
        msg = f"guest run {plan!r} {why} after {seconds:.0f}s without DONE: {out[-400:]!r}\n{text[-3000:]}"
        raise AssertionError(msg)
    return PlanResult(plan=plan, captures=parse_serial(text, plan), serial=text, seconds=seconds)
