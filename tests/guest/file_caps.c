/*
 * Sets or shows a file's capabilities, for a build step (busybox has no setcap).
 *
 *   file_caps set PATH   gives PATH CAP_NET_RAW, permitted and effective (vfs_cap_data
 *                        revision 2), and a user.skiff-note extended attribute
 *   file_caps get PATH   prints "caps HEX" (or "caps none") and "note yes|no"
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

static const unsigned char caps[20] = {0, 0, 0, 2, 0, 0x20};

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: file_caps set|get PATH\n");
		return 2;
	}
	const char *path = argv[2];
	if (strcmp(argv[1], "set") == 0) {
		if (setxattr(path, "security.capability", caps, sizeof(caps), 0) != 0) {
			fprintf(stderr, "setxattr security.capability: %s\n", strerror(errno));
			return 1;
		}
		if (setxattr(path, "user.skiff-note", "x", 1, 0) != 0) {
			fprintf(stderr, "setxattr user.skiff-note: %s\n", strerror(errno));
			return 1;
		}
		return 0;
	}
	unsigned char value[64];
	ssize_t n = getxattr(path, "security.capability", value, sizeof(value));
	if (n < 0) {
		printf("caps none\n");
	} else {
		printf("caps ");
		for (ssize_t i = 0; i < n; i++)
			printf("%02x", value[i]);
		printf("\n");
	}
	char note[8];
	printf("note %s\n", getxattr(path, "user.skiff-note", note, sizeof(note)) < 0 ? "no" : "yes");
	return 0;
}
