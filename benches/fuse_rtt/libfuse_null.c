/*
 * The libfuse3 baseline of benches/fuse_rtt.rs: a low-level, single-threaded FUSE server whose
 * one file, `iommu`, answers every ioctl the way an iommufd ioctl of the `_IO` shape is served:
 * the argument is a pointer into the caller, so the server reads 24 bytes there and writes them
 * back with process_vm_readv/writev, then answers 0.
 *
 * Usage: libfuse_null MOUNTPOINT (stays in the foreground; SIGTERM unmounts and exits).
 * Built by the bench with `cc ... $(pkg-config --cflags --libs fuse3)` (Debian libfuse3-dev).
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define FILE_INO 2
#define FILE_NAME "iommu"
#define ARG_BYTES 24

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0666;
		st->st_nlink = 1;
	}
}

static void null_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, FILE_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = FILE_INO;
	e.generation = 1;
	e.attr_timeout = 3600;
	e.entry_timeout = 3600;
	fill_attr(FILE_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void null_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != FILE_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 3600);
}

static void null_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FILE_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void null_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
		       struct fuse_file_info *fi, unsigned flags, const void *in_buf,
		       size_t in_bufsz, size_t out_bufsz)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	unsigned char buf[ARG_BYTES];
	struct iovec local = { buf, sizeof(buf) };
	struct iovec remote = { arg, sizeof(buf) };

	(void)ino, (void)cmd, (void)fi, (void)flags, (void)in_buf, (void)in_bufsz, (void)out_bufsz;
	if (process_vm_readv(ctx->pid, &local, 1, &remote, 1, 0) != sizeof(buf) ||
	    process_vm_writev(ctx->pid, &local, 1, &remote, 1, 0) != sizeof(buf)) {
		fuse_reply_err(req, EFAULT);
		return;
	}
	fuse_reply_ioctl(req, 0, NULL, 0);
}

static const struct fuse_lowlevel_ops null_ops = {
	.lookup = null_lookup,
	.getattr = null_getattr,
	.open = null_open,
	.ioctl = null_ioctl,
};

int main(int argc, char **argv)
{
	char *fuse_argv[] = { argv[0], "-o", "fsname=libfuse_null", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
	struct fuse_session *se;
	int ret = 1;

	if (argc != 2) {
		fprintf(stderr, "usage: %s MOUNTPOINT\n", argv[0]);
		return 2;
	}
	se = fuse_session_new(&args, &null_ops, sizeof(null_ops), NULL);
	if (!se)
		return 1;
	if (fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, argv[1]) == 0) {
			ret = fuse_session_loop(se) != 0;
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	fuse_session_destroy(se);
	return ret;
}
