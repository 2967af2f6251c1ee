/* LD_PRELOAD probe for Triton's HTTP frontend (scripts/bench_serving.py --probe-http-queue; docs/serving.md,
 * "Ensemble over HTTP"). libevhtp's evthr_defer hands a response to an HTTP thread as a 17-byte send() on a
 * non-blocking Unix socketpair, and Triton ignores a failed one. For every 17-byte send this logs to stderr (the
 * server log) each new peak of the socket's queued bytes (SIOCOUTQ) and every failed send. Diagnostic only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/sockios.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>

#define EVTHR_CMD_BYTES 17

static ssize_t (*real_send)(int, const void *, size_t, int);
static atomic_long sends, failures, peak_bytes;

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    if (!real_send) real_send = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    ssize_t sent = real_send(fd, buf, len, flags);
    int saved = errno;
    if (len == EVTHR_CMD_BYTES) {
        long n = atomic_fetch_add(&sends, 1) + 1;
        int queued = 0;
        if (ioctl(fd, SIOCOUTQ, &queued) == 0) {
            long peak = atomic_load(&peak_bytes);
            while (queued > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, queued)) {
            }
            if (queued > peak) fprintf(stderr, "koserve-probe: queue peak %d bytes\n", queued);
        }
        if (sent <= 0) {
            long f = atomic_fetch_add(&failures, 1) + 1;
            fprintf(stderr, "koserve-probe: send failed (errno %d): %ld of %ld\n", saved, f, n);
        }
    }
    errno = saved;
    return sent;
}
