/*
 * A tiny static /init for VMM tests and the boot benchmark. It mounts /proc, prints a
 * marker, the vCPU count and memory size the guest sees, then ends the VM:
 *   default            reboot (the VMM exits 0)
 *   skiff.test=panic   exit, so the kernel panics ("Attempted to kill init")
 * Kept to raw system calls and no libc buffering: every write is one syscall.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

static void say(const char *s) { write(1, s, strlen(s)); }

static long count_in_file(const char *path, const char *needle, char *line_out, size_t cap)
{
	static char buf[65536];
	int fd = open(path, O_RDONLY);
	long n = 0, total = 0, r;
	if (fd < 0)
		return -1;
	while ((r = read(fd, buf + total, sizeof(buf) - 1 - total)) > 0)
		total += r;
	close(fd);
	buf[total] = 0;
	for (char *p = buf; (p = strstr(p, needle)) != NULL; p++) {
		if (p != buf && p[-1] != '\n')
			continue;
		if (n == 0 && line_out) {
			size_t i = 0;
			while (p[i] && p[i] != '\n' && i + 1 < cap) {
				line_out[i] = p[i];
				i++;
			}
			line_out[i] = 0;
		}
		n++;
	}
	return n;
}

static void print_num(const char *label, long v)
{
	char b[32];
	int i = sizeof(b);
	b[--i] = 0;
	b[--i] = '\n';
	if (v == 0)
		b[--i] = '0';
	while (v > 0) {
		b[--i] = '0' + v % 10;
		v /= 10;
	}
	say(label);
	say(&b[i]);
}

int main(void)
{
	char memline[128] = "MemTotal: ?";
	char cmdline[2048] = "";
	int fd;

	mount("proc", "/proc", "proc", 0, NULL);
	say("SKIFF-TEST-INIT: hello from guest user space\n");
	print_num("SKIFF-TEST-INIT: cpus=", count_in_file("/proc/cpuinfo", "processor", NULL, 0));
	count_in_file("/proc/meminfo", "MemTotal:", memline, sizeof(memline));
	say("SKIFF-TEST-INIT: ");
	say(memline);
	say("\n");
	fd = open("/proc/cmdline", O_RDONLY);
	if (fd >= 0) {
		long r = read(fd, cmdline, sizeof(cmdline) - 1);
		if (r > 0)
			cmdline[r] = 0;
		close(fd);
	}
	if (strstr(cmdline, "skiff.test=panic")) {
		say("SKIFF-TEST-INIT: exiting to make the kernel panic\n");
		return 1;
	}
	say("SKIFF-TEST-INIT: done\n");
	sync();
	reboot(RB_AUTOBOOT);
	return 0;
}
