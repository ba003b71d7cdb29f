/*
 * dgram.h: what both compatibility programs do with their datagram socket,
 * as the original SDK's libraries did (spec: guest-host-protocol.md, section
 * 1): abstract addresses without a trailing NUL, a receive buffer of the
 * libraries' size, and a loop that hands each datagram to the program.
 * Written for this project from the spec; libc only. Set `dgram_program`
 * (the name error messages start with) first thing in main.
 */
#ifndef SERVERGROUP_COMPAT_DGRAM_H
#define SERVERGROUP_COMPAT_DGRAM_H

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

static const char *dgram_program = "compat";

static void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", dgram_program, what, strerror(errno));
    exit(2);
}

/* An abstract-namespace address: length sizeof(sa_family_t) + 1 + strlen(name). */
static socklen_t abstract_addr(struct sockaddr_un *sa, const char *name)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    sa->sun_path[0] = '\0';
    memcpy(sa->sun_path + 1, name, strlen(name));
    return (socklen_t)(sizeof(sa_family_t) + 1 + strlen(name));
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Returns 1 when the program accepted the datagram, 0 when it ignored it. */
typedef int (*dgram_handler)(int fd, const char *buf, size_t n, void *ctx);

/*
 * Receive into `buf` (`cap` bytes, as the original libraries' buffer) until
 * `seconds` have passed (negative: no limit) or `count` datagrams were
 * accepted (negative: no limit). With `raw`, print each datagram's bytes and
 * sender first ("raw N @name BYTES"). A datagram that does not fit is
 * reported ("truncated N") and not handed on.
 */
static void dgram_loop(int fd, char *buf, size_t cap, double seconds, long count, int raw,
                       dgram_handler handle, void *ctx)
{
    double deadline = seconds < 0 ? 0 : now() + seconds;
    long accepted = 0;

    while (count < 0 || accepted < count) {
        struct pollfd pfd = {fd, POLLIN, 0};
        struct sockaddr_un from;
        struct iovec iov = {buf, cap};
        struct msghdr mh;
        int timeout_ms = -1, r;
        ssize_t n;

        if (seconds >= 0) {
            double left = deadline - now();
            if (left <= 0)
                break;
            timeout_ms = (int)(left * 1000) + 1;
        }
        r = poll(&pfd, 1, timeout_ms);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (r == 0)
            continue;
        memset(&mh, 0, sizeof mh);
        memset(&from, 0, sizeof from);
        mh.msg_name = &from;
        mh.msg_namelen = sizeof from;
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        n = recvmsg(fd, &mh, MSG_TRUNC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("recvmsg");
        }
        if (raw) {
            size_t shown = (size_t)n < cap ? (size_t)n : cap;
            int named = mh.msg_namelen > sizeof(sa_family_t) + 1 && from.sun_path[0] == '\0';
            printf("raw %zd %s%.*s ", n, named ? "@" : "-",
                   named ? (int)(mh.msg_namelen - sizeof(sa_family_t) - 1) : 0,
                   from.sun_path + 1);
            fwrite(buf, 1, shown, stdout);
            printf("\n");
        }
        if ((size_t)n >= cap || (mh.msg_flags & MSG_TRUNC)) {
            printf("truncated %zd\n", n);
            continue;
        }
        accepted += handle(fd, buf, (size_t)n, ctx);
    }
}

#endif
