/*
 * Guest side of the vsock tests and benchmark (static, run under busybox).
 *   vsock-test dial PORT BYTES    connect to the host (CID 2), send BYTES of the test
 *                                 pattern while receiving until EOF; print what arrived
 *   vsock-test listen PORT BYTES  accept one connection from the host, same exchange
 *   vsock-test many PORT N        N connections to the host at once; on each send
 *                                 "ping I\n" and expect "pong I\n" back
 *   vsock-test read PATH X        read PATH sequentially in 1 MiB blocks, print MB/s
 * Prints "VSOCK-TEST: ..." lines the host test parses. Checksum: 64-bit FNV-1a.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static uint8_t pattern(uint64_t i) { return (uint8_t)(i * 7 + (i >> 11)); }

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static double now(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return tv.tv_sec + tv.tv_usec / 1e6;
}

static int exchange(int fd, uint64_t bytes)
{
	static uint8_t out[65536], in[65536];
	uint64_t sent = 0, got = 0, h = 0xcbf29ce484222325ULL;
	int eof = 0, wr_done = 0;
	double t0 = now();
	fcntl(fd, F_SETFL, O_NONBLOCK);
	if (bytes == 0) {
		shutdown(fd, SHUT_WR);
		wr_done = 1;
	}
	while (!eof || !wr_done) {
		struct pollfd p = { .fd = fd, .events = (eof ? 0 : POLLIN) | (wr_done ? 0 : POLLOUT) };
		if (poll(&p, 1, 60000) <= 0) {
			printf("VSOCK-TEST: error=poll-timeout sent=%llu recv=%llu\n",
			       (unsigned long long)sent, (unsigned long long)got);
			return 1;
		}
		if (!wr_done && (p.revents & POLLOUT)) {
			size_t n = sizeof(out);
			if (bytes - sent < n)
				n = bytes - sent;
			for (size_t i = 0; i < n; i++)
				out[i] = pattern(sent + i);
			ssize_t w = write(fd, out, n);
			if (w < 0 && errno != EAGAIN) {
				printf("VSOCK-TEST: error=write-%d\n", errno);
				return 1;
			}
			if (w > 0)
				sent += w;
			if (sent == bytes) {
				shutdown(fd, SHUT_WR);
				wr_done = 1;
			}
		}
		if (!eof && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
			ssize_t r = read(fd, in, sizeof(in));
			if (r == 0)
				eof = 1;
			else if (r < 0 && errno != EAGAIN) {
				printf("VSOCK-TEST: error=read-%d\n", errno);
				return 1;
			} else if (r > 0) {
				h = fnv(h, in, r);
				got += r;
			}
		}
	}
	double dt = now() - t0;
	printf("VSOCK-TEST: sent=%llu recv=%llu fnv=%016llx secs=%.3f\n", (unsigned long long)sent,
	       (unsigned long long)got, (unsigned long long)h, dt);
	close(fd);
	return 0;
}

static int dial(unsigned port)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = port };
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		printf("VSOCK-TEST: error=connect-%d\n", errno);
		return -1;
	}
	return fd;
}

static int many(unsigned port, int n)
{
	int *fds = calloc(n, sizeof(int));
	char buf[64];
	for (int i = 0; i < n; i++) {
		fds[i] = dial(port);
		if (fds[i] < 0)
			return 1;
	}
	for (int i = 0; i < n; i++) {
		int len = snprintf(buf, sizeof(buf), "ping %d\n", i);
		if (write(fds[i], buf, len) != len) {
			printf("VSOCK-TEST: error=write-%d\n", i);
			return 1;
		}
	}
	int ok = 0;
	for (int i = 0; i < n; i++) {
		char want[64];
		int wl = snprintf(want, sizeof(want), "pong %d\n", i), got = 0;
		while (got < wl) {
			ssize_t r = read(fds[i], buf + got, sizeof(buf) - got);
			if (r <= 0)
				break;
			got += r;
		}
		if (got == wl && memcmp(buf, want, wl) == 0)
			ok++;
		close(fds[i]);
	}
	printf("VSOCK-TEST: many=%d ok=%d\n", n, ok);
	return ok == n ? 0 : 1;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 4) {
		fprintf(stderr, "usage: vsock-test dial|listen|many PORT BYTES|N\n");
		return 2;
	}
	if (!strcmp(argv[1], "read")) {
		static uint8_t buf[1 << 20];
		int fd = open(argv[2], O_RDONLY);
		uint64_t total = 0;
		ssize_t r;
		double t0 = now();
		if (fd < 0) {
			printf("VSOCK-TEST: error=open-%d\n", errno);
			return 1;
		}
		while ((r = read(fd, buf, sizeof(buf))) > 0)
			total += r;
		double dt = now() - t0;
		printf("VSOCK-TEST: read=%llu secs=%.3f mbps=%.1f\n", (unsigned long long)total, dt,
		       total / dt / 1e6);
		return r < 0;
	}
	unsigned port = atoi(argv[2]);
	if (!strcmp(argv[1], "many"))
		return many(port, atoi(argv[3]));
	uint64_t bytes = strtoull(argv[3], NULL, 10);
	if (!strcmp(argv[1], "dial")) {
		int fd = dial(port);
		return fd < 0 ? 1 : exchange(fd, bytes);
	}
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	int l = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0) {
		printf("VSOCK-TEST: error=listen-%d\n", errno);
		return 1;
	}
	printf("VSOCK-TEST: listening\n");
	int fd = accept(l, NULL, NULL);
	if (fd < 0) {
		printf("VSOCK-TEST: error=accept-%d\n", errno);
		return 1;
	}
	return exchange(fd, bytes);
}
