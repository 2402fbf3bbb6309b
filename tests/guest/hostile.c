/*
 * A hostile task for tests/tests/hostile_guest.rs: static, run as root in a Skiff guest.
 *
 *   hostile VSOCK_S HOLD_CONNS HOLD_S FRAMES_S STDOUT_MIB STDOUT_MIN_MIB STDOUT_S
 *           CONSOLE_MIN CONSOLE_S SESSION_S
 *
 * Phases, in order (the connections of phase 2 stay open until the program ends):
 *  1. vsock: non-blocking connects to host (CID 2) ports nobody listens on, in batches;
 *     every other batch is closed at once, the others after waiting for the host's answer
 *     (a refusal: the host's RST)
 *  2. HOLD_CONNS connections to the agent's host port, never read from, written to until
 *     they take no more (or HOLD_S passes)
 *  3. one more connection to the agent's port: a valid hello, then protocol frames as fast
 *     as it takes them for FRAMES_S: `started` messages, a failure message of 1 MiB, a
 *     header announcing a 4 GiB frame, garbage
 *  4. stdout: 1 MiB writes until STDOUT_MIB, or STDOUT_S once STDOUT_MIN_MIB are out
 *  5. /dev/console: 1 KiB writes for CONSOLE_S and at least CONSOLE_MIN bytes
 *  6. the agent's own connection to the host, taken from PID 1 with pidfd_getfd (what a
 *     hostile guest kernel could do): `started` frames for SESSION_S, then a stderr frame
 *     with this phase's figures and a failure message of almost 1 MiB, which ends the task
 *
 * Each phase prints one line "hostile: PHASE key=value ..." to stderr (the last one in the
 * frame of phase 6), which the test reads from the task's log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

#define HOST_CID 2
#define AGENT_PORT 1024
#define MAX_FDS 4096

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Every line said so far: the last frame repeats them, since the log keeps only the newest
 * output and phase 4 writes far more than that. */
static char said[8192];
static size_t said_len;

/* Keeps a line for the last frame; `out` also writes it to stderr. */
static void keep(int out, const char *fmt, va_list ap)
{
	char line[512];
	int n = snprintf(line, sizeof(line), "hostile: ");
	n += vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (out) {
		fwrite(line, 1, n, stderr);
		fflush(stderr);
	}
	if (said_len + n <= sizeof(said)) {
		memcpy(said + said_len, line, n);
		said_len += n;
	}
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	keep(1, fmt, ap);
	va_end(ap);
}

/* Like say, without writing to stderr (phase 6 writes on the agent's connection itself). */
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	keep(0, fmt, ap);
	va_end(ap);
}

/* A non-blocking vsock socket connecting to the host's `port`; -1 if socket() failed. */
static int dial(unsigned port)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = HOST_CID, .svm_port = port };
	connect(fd, (struct sockaddr *)&a, sizeof(a));
	return fd;
}

/* Waits until every fd in `fds` has an answer to its connect or `secs` pass; returns how
 * many connected (SO_ERROR 0 and writable) and counts the refused ones. */
static int settle(int *fds, int n, double secs, int *refused)
{
	struct pollfd *p = calloc(n, sizeof(*p));
	int connected = 0, pending = n;
	for (int i = 0; i < n; i++)
		p[i] = (struct pollfd){ .fd = fds[i], .events = POLLOUT };
	double end = now() + secs;
	while (pending > 0 && now() < end) {
		if (poll(p, n, 100) < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			if (p[i].fd < 0 || !p[i].revents)
				continue;
			int err = 0;
			socklen_t len = sizeof(err);
			getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
			if (err == 0 && (p[i].revents & POLLOUT))
				connected++;
			else
				(*refused)++;
			p[i].fd = -1;
			pending--;
		}
	}
	free(p);
	return connected;
}

/* Phase 1. */
static void vsock_flood(double secs)
{
	enum { BATCH = 4 };
	int fds[BATCH];
	long attempts = 0, socket_errors = 0, batches = 0;
	int refused = 0, answered = 0;
	unsigned port = 2000;
	double t0 = now(), end = t0 + secs;
	while (now() < end) {
		int n = 0;
		for (int i = 0; i < BATCH && now() < end; i++) {
			if (++port > 60000)
				port = 2000;
			if (port == AGENT_PORT)
				port++;
			int fd = dial(port);
			attempts++;
			if (fd < 0)
				socket_errors++;
			else
				fds[n++] = fd;
		}
		if (batches++ % 2 == 1)
			answered += settle(fds, n, 0.5, &refused);
		for (int i = 0; i < n; i++)
			close(fds[i]);
	}
	double dt = now() - t0;
	say("vsock attempts=%ld refused=%d accepted=%d socket_errors=%ld secs=%.1f per_s=%.1f",
	    attempts, refused, answered, socket_errors, dt, attempts / dt);
}

/* Writes what `fd` takes now, until `end`; returns bytes written (0 when full), -1 on an
 * error. (Every guest kernel copy is slow on PVM hosts: 64 KiB can take a good part of a
 * second, so the clock is checked per write.) */
static long write_some(int fd, const char *buf, size_t len, double end)
{
	long total = 0;
	while (now() < end) {
		ssize_t w = write(fd, buf, len);
		if (w > 0) {
			total += w;
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			return total;
		return total ? total : -1;
	}
	return total;
}

/* Phase 2: dials for `secs` (at most `want` connections), then fills them for `secs`;
 * returns how many it keeps open. */
static int hold_connections(int want, double secs, int *held)
{
	static char chunk[64 * 1024];
	memset(chunk, 'h', sizeof(chunk));
	int n = 0, refused = 0;
	double t0 = now(), end = t0 + secs;
	while (n < want && n < MAX_FDS && now() < end) {
		int fd = dial(AGENT_PORT);
		if (fd >= 0)
			held[n++] = fd;
	}
	double dial_s = now() - t0;
	int connected = settle(held, n, 3.0, &refused);
	t0 = now();
	end = t0 + secs;
	long long bytes = 0;
	int full = 0;
	while (now() < end && full < n) {
		full = 0;
		for (int i = 0; i < n && now() < end; i++) {
			long w = write_some(held[i], chunk, sizeof(chunk), end);
			if (w <= 0)
				full++;
			else
				bytes += w;
		}
	}
	say("hold opened=%d connected=%d refused=%d dial_secs=%.1f bytes=%lld full=%d secs=%.1f",
	    n, connected, refused, dial_s, bytes, full, now() - t0);
	return n;
}

/* Appends one control frame (kind 0) with `json` to `out` at `*at`. */
static void put_frame(char *out, size_t *at, const char *json, size_t len)
{
	uint32_t flen = (uint32_t)len + 1;
	memcpy(out + *at, &flen, 4);
	out[*at + 4] = 0;
	memcpy(out + *at + 5, json, len);
	*at += 5 + len;
}

/* A `failed` message whose text is `text_len` bytes long, framed; returns its length. */
static size_t failed_frame(char *out, size_t text_len)
{
	const char *head = "{\"type\":\"failed\",\"kind\":\"internal\",\"message\":\"";
	const char *tail = "\",\"exit_code\":125}";
	size_t hl = strlen(head), tl = strlen(tail);
	char *json = malloc(hl + text_len + tl);
	memcpy(json, head, hl);
	memset(json + hl, 'F', text_len);
	memcpy(json + hl + text_len, tail, tl);
	size_t at = 0;
	put_frame(out, &at, json, hl + text_len + tl);
	free(json);
	return at;
}

static const char STARTED[] = "{\"type\":\"started\",\"pid\":1,\"spec_ms\":1,\"prepared_ms\":1,\"exec_ms\":1}";
static const char HELLO[] = "{\"type\":\"hello\",\"protocol_version\":6,\"agent_version\":\"hostile\","
			    "\"timings\":{\"agent_start_ms\":1,\"setup_done_ms\":2,\"connected_ms\":3}}";

/* Phase 3. */
static void frame_flood(double secs)
{
	enum { STARTS = 1024 };
	size_t cap = STARTS * (5 + sizeof(STARTED)) + (1 << 20) + 256 + 4 + 4096;
	char *round = malloc(cap);
	size_t ends[STARTS + 3], len = 0;
	int frames = 0;
	for (int i = 0; i < STARTS; i++) {
		put_frame(round, &len, STARTED, strlen(STARTED));
		ends[frames++] = len;
	}
	len += failed_frame(round + len, 1 << 20);
	ends[frames++] = len;
	uint32_t huge = 0xffffffffu;
	memcpy(round + len, &huge, 4);
	len += 4;
	ends[frames++] = len;
	for (int i = 0; i < 4096; i++)
		round[len++] = (char)(i * 31 + 7);
	ends[frames++] = len;

	int fd = dial(AGENT_PORT), refused = 0;
	if (fd < 0 || settle(&fd, 1, 10.0, &refused) != 1) {
		say("frames connected=0 refused=%d", refused);
		if (fd >= 0)
			close(fd);
		free(round);
		return;
	}
	char hello[256];
	size_t hl = 0;
	put_frame(hello, &hl, HELLO, strlen(HELLO));
	long long bytes = write_some(fd, hello, hl, now() + secs) > 0 ? (long long)hl : 0;
	long sent = bytes ? 1 : 0;
	size_t off = 0;
	int next = 0;
	double t0 = now(), end = t0 + secs;
	while (now() < end) {
		long w = write_some(fd, round + off, len - off, end);
		if (w < 0)
			break;
		off += w;
		bytes += w;
		while (next < frames && ends[next] <= off) {
			sent++;
			next++;
		}
		if (off == len) {
			off = 0;
			next = 0;
			continue;
		}
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		poll(&p, 1, 100);
	}
	double dt = now() - t0;
	say("frames connected=1 sent=%ld bytes=%lld secs=%.1f", sent, bytes, dt);
	/* Left open: nobody reads it. */
}

/* Phase 4. */
static void stdout_flood(long mib, long min_mib, double secs)
{
	static char buf[1 << 20];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (i % 128 == 127) ? '\n' : 'o';
	long long bytes = 0;
	double t0 = now(), end = t0 + secs;
	while (bytes < (long long)mib << 20 && (now() < end || bytes < (long long)min_mib << 20)) {
		size_t off = 0;
		while (off < sizeof(buf)) {
			ssize_t w = write(1, buf + off, sizeof(buf) - off);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				goto out;
			off += w;
		}
		bytes += sizeof(buf);
	}
out:;
	double dt = now() - t0;
	say("stdout bytes=%lld secs=%.1f mb_per_s=%.2f", bytes, dt, bytes / dt / 1e6);
}

/* Phase 5. */
static void console_flood(long min_bytes, double secs)
{
	char buf[1024];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (i % 64 == 63) ? '\n' : 'c';
	int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		say("console open_errno=%d", errno);
		return;
	}
	long long bytes = 0;
	double t0 = now(), end = t0 + secs;
	while (now() < end || bytes < min_bytes) {
		ssize_t w = write(fd, buf, sizeof(buf));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		bytes += w;
	}
	double dt = now() - t0;
	close(fd);
	say("console bytes=%lld secs=%.1f bytes_per_s=%.0f", bytes, dt, bytes / dt);
}

/* The agent's connection to the host, taken from PID 1; -1 if it cannot be had. */
static int agent_connection(void)
{
	int pidfd = (int)syscall(SYS_pidfd_open, 1, 0);
	if (pidfd < 0)
		return -1;
	for (int fd = 0; fd < 256; fd++) {
		int ours = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
		if (ours < 0)
			continue;
		struct sockaddr_vm peer;
		socklen_t len = sizeof(peer);
		if (getpeername(ours, (struct sockaddr *)&peer, &len) == 0 &&
		    peer.svm_family == AF_VSOCK && peer.svm_cid == HOST_CID &&
		    peer.svm_port == AGENT_PORT) {
			close(pidfd);
			return ours;
		}
		close(ours);
	}
	close(pidfd);
	return -1;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		len -= w;
	}
	return 0;
}

/* Phase 6. */
static void session_flood(double secs)
{
	int fd = agent_connection();
	if (fd < 0) {
		say("session taken=0 errno=%d", errno);
		fwrite(said, 1, said_len, stderr);
		return;
	}
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	enum { STARTS = 256 };
	char *batch = malloc(STARTS * (5 + sizeof(STARTED)));
	size_t len = 0;
	for (int i = 0; i < STARTS; i++)
		put_frame(batch, &len, STARTED, strlen(STARTED));
	long sent = 0;
	double t0 = now(), end = t0 + secs;
	while (now() < end && write_all(fd, batch, len) == 0)
		sent += STARTS;
	double dt = now() - t0;
	/* The figures go out as our own stderr frame, right before the failure that ends the
	 * task (written through the agent, they could land inside that frame). */
	note("session taken=1 started_frames=%ld secs=%.1f per_s=%.0f", sent, dt, sent / dt);
	const char *line = said;
	int ll = (int)said_len;
	size_t fail_text = (1 << 20) - 128;
	char *out = malloc(5 + ll + (1 << 20) + 64);
	uint32_t flen = (uint32_t)ll + 1;
	memcpy(out, &flen, 4);
	out[4] = 2; /* stderr */
	memcpy(out + 5, line, ll);
	size_t at = 5 + ll;
	at += failed_frame(out + at, fail_text);
	write_all(fd, out, at);
	free(out);
	free(batch);
}

int main(int argc, char **argv)
{
	if (argc != 11) {
		fprintf(stderr, "usage: hostile VSOCK_S HOLD_CONNS HOLD_S FRAMES_S STDOUT_MIB "
				"STDOUT_MIN_MIB STDOUT_S CONSOLE_MIN CONSOLE_S SESSION_S\n");
		return 2;
	}
	double vsock_s = atof(argv[1]), hold_s = atof(argv[3]), frames_s = atof(argv[4]);
	int hold_conns = atoi(argv[2]);
	long stdout_mib = atol(argv[5]), stdout_min_mib = atol(argv[6]);
	double stdout_s = atof(argv[7]);
	long console_min = atol(argv[8]);
	double console_s = atof(argv[9]), session_s = atof(argv[10]);
	struct rlimit r = { MAX_FDS + 64, MAX_FDS + 64 };
	setrlimit(RLIMIT_NOFILE, &r);
	static int held[MAX_FDS];

	say("begin");
	vsock_flood(vsock_s);
	int nheld = hold_connections(hold_conns, hold_s, held);
	frame_flood(frames_s);
	stdout_flood(stdout_mib, stdout_min_mib, stdout_s);
	console_flood(console_min, console_s);
	/* Let the agent pass on everything written so far before its connection is used. */
	sleep(2);
	session_flood(session_s);
	for (int i = 0; i < nheld; i++)
		close(held[i]);
	return 0;
}
