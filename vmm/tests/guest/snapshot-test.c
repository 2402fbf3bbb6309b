/*
 * /init for the snapshot tests and benchmark (static). It mounts devtmpfs, then forever:
 * dials the host (CID 2) on vsock port 5000, sends one line
 *   HELLO conn=N rand=<16 bytes of /dev/urandom, hex> time=<CLOCK_REALTIME> disk=<text>
 * where N counts connections since boot and <text> is the first line of /dev/vda (read
 * with O_DIRECT, so never from the page cache), then answers each "PING x" line with
 * "PONG x". When the connection ends (the host closes it, or a restored VM's vsock
 * transport reset drops it) it dials again. Kept to raw system calls; every console
 * line is one write. With a network card, eth0 comes up first as 10.200.0.2/24, so the
 * host can ping the guest (its kernel answers; no process of ours is involved).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>

static void say(const char *s) { write(1, s, strlen(s)); }

static int dial(unsigned port)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void random_hex(char *out)
{
	unsigned char b[16] = { 0 };
	int fd = open("/dev/urandom", O_RDONLY);
	if (fd < 0 || read(fd, b, sizeof(b)) != sizeof(b)) {
		strcpy(out, "none");
	} else {
		for (int i = 0; i < 16; i++)
			sprintf(out + 2 * i, "%02x", b[i]);
	}
	if (fd >= 0)
		close(fd);
}

static void disk_line(char *out, size_t cap)
{
	void *buf = NULL;
	strcpy(out, "none");
	int fd = open("/dev/vda", O_RDONLY | O_DIRECT);
	if (fd < 0 || posix_memalign(&buf, 4096, 4096) != 0) {
		if (fd >= 0)
			close(fd);
		return;
	}
	ssize_t r = read(fd, buf, 4096);
	close(fd);
	if (r > 0) {
		size_t i = 0;
		const char *p = buf;
		while (i < (size_t)r && i + 1 < cap && p[i] != '\n' && p[i] >= 0x20 && p[i] < 0x7f) {
			out[i] = p[i];
			i++;
		}
		out[i] = 0;
	}
	free(buf);
}

static void net_up(void)
{
	struct ifreq ifr;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0)
		return;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "eth0");
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = inet_addr("10.200.0.2");
	if (ioctl(s, SIOCSIFADDR, &ifr) == 0) {
		sin->sin_addr.s_addr = inet_addr("255.255.255.0");
		ioctl(s, SIOCSIFNETMASK, &ifr);
		ifr.ifr_flags = IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) == 0)
			say("SNAPSHOT-TEST: eth0 up\n");
	}
	close(s);
}

static void serve(int fd)
{
	char buf[256];
	size_t have = 0;
	for (;;) {
		ssize_t r = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (r <= 0)
			return;
		have += r;
		buf[have] = 0;
		char *nl;
		while ((nl = strchr(buf, '\n')) != NULL) {
			*nl = 0;
			if (!strncmp(buf, "PING ", 5)) {
				char reply[300];
				int n = snprintf(reply, sizeof(reply), "PONG %s\n", buf + 5);
				if (write(fd, reply, n) != n)
					return;
			}
			size_t used = nl + 1 - buf;
			memmove(buf, nl + 1, have - used + 1);
			have -= used;
		}
		if (have == sizeof(buf) - 1)
			have = 0;
	}
}

int main(void)
{
	int conn = 0;
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	net_up();
	say("SNAPSHOT-TEST: up\n");
	for (;;) {
		int fd = dial(5000);
		if (fd < 0) {
			struct timespec ts = { 0, 100 * 1000 * 1000 };
			nanosleep(&ts, NULL);
			continue;
		}
		conn++;
		char rnd[40], disk[128], line[512];
		struct timespec now;
		random_hex(rnd);
		disk_line(disk, sizeof(disk));
		clock_gettime(CLOCK_REALTIME, &now);
		int n = snprintf(line, sizeof(line), "HELLO conn=%d rand=%s time=%lld.%09ld disk=%s\n",
				 conn, rnd, (long long)now.tv_sec, now.tv_nsec, disk);
		say("SNAPSHOT-TEST: ");
		say(line);
		if (write(fd, line, n) == n)
			serve(fd);
		close(fd);
		say("SNAPSHOT-TEST: connection ended\n");
	}
}
