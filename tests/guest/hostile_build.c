/*
 * A build's RUN step that lies about its changes. It takes the agent's connection to the
 * host from PID 1 (pidfd_getfd, as root in the guest can) and sends a forged "upper" tar
 * stream (frame kind 5) ahead of the agent's own, without an end-of-archive, so that the
 * host reads the forged entries followed by the real ones as one archive. Then it exits 0.
 *
 *   hostile_build traversal   an entry named ../../../../tmp/skiff-build-escape-traversal
 *   hostile_build links       a symlink "a" -> "/" and a file "a/tmp/skiff-build-escape-link"
 *                             through it: accepted as layer entries, they must never lead
 *                             out of the host's unpacked tree when a later step applies them
 *   hostile_build xattr       a file "evil.txt" whose PAX header sets the extended attribute
 *                             trusted.skiff-evil, which the host must not take (a build keeps
 *                             only security.capability)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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
#define UPPER_FRAME 5

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

/* Appends a ustar entry (header and padded content) to `out` at `*at`. */
static void add_entry(char *out, size_t *at, const char *name, char type, const char *link,
		      const char *content)
{
	char *h = out + *at;
	size_t size = content ? strlen(content) : 0;
	memset(h, 0, 512);
	strncpy(h, name, 100);
	snprintf(h + 100, 8, "%07o", type == '5' ? 0755 : 0644);
	snprintf(h + 108, 8, "%07o", 0);
	snprintf(h + 116, 8, "%07o", 0);
	snprintf(h + 124, 12, "%011o", (unsigned)size);
	snprintf(h + 136, 12, "%011o", 1700000000);
	h[156] = type;
	if (link)
		strncpy(h + 157, link, 100);
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	memset(h + 148, ' ', 8);
	unsigned sum = 0;
	for (int i = 0; i < 512; i++)
		sum += (unsigned char)h[i];
	snprintf(h + 148, 8, "%06o", sum);
	h[155] = ' ';
	*at += 512;
	if (size) {
		memset(out + *at, 0, (size + 511) / 512 * 512);
		memcpy(out + *at, content, size);
		*at += (size + 511) / 512 * 512;
	}
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
		len -= (size_t)w;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: hostile_build traversal|links|xattr\n");
		return 2;
	}
	static char tar[16384];
	size_t n = 0;
	if (strcmp(argv[1], "traversal") == 0) {
		add_entry(tar, &n, "ok.txt", '0', NULL, "fine\n");
		add_entry(tar, &n, "../../../../tmp/skiff-build-escape-traversal", '0', NULL,
			  "escaped\n");
	} else if (strcmp(argv[1], "xattr") == 0) {
		add_entry(tar, &n, "PaxHeaders/evil.txt", 'x', NULL,
			  "37 SCHILY.xattr.trusted.skiff-evil=x\n");
		add_entry(tar, &n, "evil.txt", '0', NULL, "evil\n");
	} else {
		add_entry(tar, &n, "a", '2', "/", NULL);
		add_entry(tar, &n, "a/tmp/skiff-build-escape-link", '0', NULL, "escaped\n");
	}
	int fd = agent_connection();
	if (fd < 0) {
		fprintf(stderr, "hostile_build: no agent connection\n");
		return 3;
	}
	char frame[5 + sizeof(tar)];
	uint32_t len = (uint32_t)n + 1;
	memcpy(frame, &len, 4);
	frame[4] = UPPER_FRAME;
	memcpy(frame + 5, tar, n);
	if (write_all(fd, frame, 5 + n) < 0) {
		fprintf(stderr, "hostile_build: write: %s\n", strerror(errno));
		return 4;
	}
	return 0;
}
