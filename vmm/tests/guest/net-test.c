/*
 * Guest side of the virtio-net benchmark (vmm/benches/net.rs). Static, run under busybox
 * once eth0 has its address:
 *   net-test HOST PORT BYTES ROUNDS MSG
 * Three TCP connections to HOST:PORT, one after the other; each starts with a command line
 * that the benchmark's host side serves:
 *   "UP BYTES\n"         the guest sends BYTES of the test pattern and shuts down writing;
 *                        the host answers "OK GOT BAD\n" once it has read to the end
 *   "DOWN BYTES\n"       the host sends BYTES of the pattern and shuts down writing; the
 *                        guest checks them and answers "OK GOT BAD\n"
 *   "ECHO MSG ROUNDS\n"  WARMUP + ROUNDS times: the guest sends MSG bytes, the host sends
 *                        them back (TCP_NODELAY on both ends)
 * Times are the guest's CLOCK_MONOTONIC. UP runs from the first byte written to the host's
 * answer (so every byte has reached the host's application, not just a socket buffer);
 * DOWN from the command sent to EOF; a round trip from the write of a message to the last
 * byte of its echo. MB/s are 10^6 bytes per second.
 * Prints "NET-TEST: ..." lines (with the guest's TCP segment and retransmission counts);
 * the last one, on success only, is the summary the benchmark parses. Exit 1 on any failure, with a "NET-TEST: error=..." line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Round trips before the measured ones: the first pay for ARP and cold caches. */
#define WARMUP 10
/* The pattern repeats every PERIOD bytes, so one table serves any offset (net.rs has the
 * same function). */
#define PERIOD (1u << 19)
/* A stalled transfer ends in an error line instead of a VM that never exits. */
#define IO_TIMEOUT_SECS 120

static uint8_t table[PERIOD];
static uint8_t buf[PERIOD];

static uint8_t pattern(uint64_t i) { return (uint8_t)(i * 7 + (i >> 11)); }

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what)
{
	printf("NET-TEST: error=%s errno=%d\n", what, errno);
	return -1;
}

static int dial(const char *host, unsigned port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct timeval tv = { .tv_sec = IO_TIMEOUT_SECS };
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
		errno = EINVAL;
		return fail("bad-address");
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return fail("socket");
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		fail("connect");
		close(fd);
		return -1;
	}
	return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= w;
	}
	return 0;
}

static int read_all(int fd, void *p, size_t n)
{
	uint8_t *b = p;
	while (n > 0) {
		ssize_t r = read(fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		b += r;
		n -= r;
	}
	return 0;
}

/* Reads one short line ("OK GOT BAD") up to EOF or newline. */
static int read_line(int fd, char *line, size_t cap)
{
	size_t n = 0;
	while (n + 1 < cap) {
		ssize_t r = read(fd, line + n, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = 0;
	return n > 0 ? 0 : -1;
}

static int command(int fd, const char *fmt, unsigned long long a, unsigned long long b)
{
	char cmd[64];
	int n = snprintf(cmd, sizeof(cmd), fmt, a, b);
	return write_all(fd, cmd, n);
}

/* Guest -> host: returns MB/s, or < 0. */
static double up(const char *host, unsigned port, uint64_t bytes)
{
	int fd = dial(host, port);
	if (fd < 0)
		return -1;
	if (command(fd, "UP %llu\n", bytes, 0) < 0)
		return fail("up-command");
	double t0 = now();
	for (uint64_t sent = 0; sent < bytes;) {
		size_t off = sent % PERIOD, n = PERIOD - off;
		if (n > 65536)
			n = 65536;
		if (n > bytes - sent)
			n = bytes - sent;
		if (write_all(fd, table + off, n) < 0)
			return fail("up-write");
		sent += n;
	}
	shutdown(fd, SHUT_WR);
	char line[64];
	unsigned long long got = 0, bad = 1;
	if (read_line(fd, line, sizeof(line)) < 0 || sscanf(line, "OK %llu %llu", &got, &bad) != 2)
		return fail("up-answer");
	double secs = now() - t0;
	close(fd);
	printf("NET-TEST: up bytes=%llu host_got=%llu host_bad=%llu secs=%.3f\n",
	       (unsigned long long)bytes, got, bad, secs);
	if (got != bytes || bad != 0) {
		errno = EIO;
		return fail("up-corrupt");
	}
	return bytes / secs / 1e6;
}

/* Host -> guest, checked against the pattern: returns MB/s, or < 0. */
static double down(const char *host, unsigned port, uint64_t bytes)
{
	int fd = dial(host, port);
	if (fd < 0)
		return -1;
	double t0 = now();
	if (command(fd, "DOWN %llu\n", bytes, 0) < 0)
		return fail("down-command");
	uint64_t got = 0, bad = 0;
	for (;;) {
		ssize_t r = read(fd, buf, 65536);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail("down-read");
		if (r == 0)
			break;
		/* Compare in at most two pieces: the read may wrap around the period. */
		for (ssize_t done = 0; done < r;) {
			size_t off = (got + done) % PERIOD, n = PERIOD - off;
			if (n > (size_t)(r - done))
				n = r - done;
			if (memcmp(buf + done, table + off, n) != 0)
				bad++;
			done += n;
		}
		got += r;
	}
	double secs = now() - t0;
	command(fd, "OK %llu %llu\n", got, bad);
	close(fd);
	printf("NET-TEST: down bytes=%llu got=%llu bad_reads=%llu secs=%.3f\n",
	       (unsigned long long)bytes, (unsigned long long)got, (unsigned long long)bad,
	       secs);
	if (got != bytes || bad != 0) {
		errno = EIO;
		return fail("down-corrupt");
	}
	return bytes / secs / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n). */
static double percentile(const double *v, int n, int pct)
{
	int rank = (n * pct + 99) / 100;
	return v[rank > 0 ? rank - 1 : 0];
}

/* Request/response round trips: fills p50/p99 in microseconds; returns 0 or < 0. */
static int echo(const char *host, unsigned port, int rounds, size_t msg, double *p50,
		double *p99)
{
	int fd = dial(host, port), one = 1;
	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (command(fd, "ECHO %llu %llu\n", msg, rounds + WARMUP) < 0)
		return fail("echo-command");
	double *us = calloc(rounds, sizeof(double));
	for (int i = 0; i < rounds + WARMUP; i++) {
		double t0 = now();
		if (write_all(fd, table, msg) < 0 || read_all(fd, buf, msg) < 0)
			return fail("echo-io");
		if (memcmp(buf, table, msg) != 0) {
			errno = EIO;
			return fail("echo-corrupt");
		}
		if (i >= WARMUP)
			us[i - WARMUP] = (now() - t0) * 1e6;
	}
	close(fd);
	qsort(us, rounds, sizeof(double), cmp_double);
	*p50 = percentile(us, rounds, 50);
	*p99 = percentile(us, rounds, 99);
	printf("NET-TEST: rtt rounds=%d msg=%zu min_us=%.0f p50_us=%.0f p99_us=%.0f max_us=%.0f\n",
	       rounds, msg, us[0], *p50, *p99, us[rounds - 1]);
	free(us);
	return 0;
}

/* The guest's TCP counters (/proc/net/snmp): retransmissions tell a stall or a lost frame
 * apart from a slow path. */
static void tcp_counters(void)
{
	char names[512], values[512];
	FILE *f = fopen("/proc/net/snmp", "r");
	if (!f)
		return;
	while (fgets(names, sizeof(names), f) && fgets(values, sizeof(values), f)) {
		if (strncmp(names, "Tcp:", 4) != 0)
			continue;
		unsigned long long out = 0, retrans = 0;
		char *ns, *vs, *n = strtok_r(names, " \n", &ns), *v = strtok_r(values, " \n", &vs);
		for (; n && v; n = strtok_r(NULL, " \n", &ns), v = strtok_r(NULL, " \n", &vs)) {
			if (!strcmp(n, "OutSegs"))
				out = strtoull(v, NULL, 10);
			if (!strcmp(n, "RetransSegs"))
				retrans = strtoull(v, NULL, 10);
		}
		printf("NET-TEST: tcp out_segs=%llu retrans_segs=%llu\n", out, retrans);
		break;
	}
	fclose(f);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 6) {
		fprintf(stderr, "usage: net-test HOST PORT BYTES ROUNDS MSG\n");
		return 2;
	}
	const char *host = argv[1];
	unsigned port = atoi(argv[2]);
	uint64_t bytes = strtoull(argv[3], NULL, 10);
	int rounds = atoi(argv[4]);
	size_t msg = strtoul(argv[5], NULL, 10);
	if (rounds < 1 || msg < 1 || msg > PERIOD) {
		fprintf(stderr, "net-test: ROUNDS >= 1, 1 <= MSG <= %u\n", PERIOD);
		return 2;
	}
	for (uint64_t i = 0; i < PERIOD; i++)
		table[i] = pattern(i);
	double p50 = 0, p99 = 0;
	double send_mbps = up(host, port, bytes);
	if (send_mbps < 0)
		return 1;
	double recv_mbps = down(host, port, bytes);
	if (recv_mbps < 0)
		return 1;
	if (echo(host, port, rounds, msg, &p50, &p99) < 0)
		return 1;
	tcp_counters();
	printf("NET-TEST: send_mbps=%.3f recv_mbps=%.3f rtt_p50_us=%.0f rtt_p99_us=%.0f\n",
	       send_mbps, recv_mbps, p50, p99);
	return 0;
}
