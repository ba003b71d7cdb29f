/*
 * host_tool: behaves on the wire as a program over the original SDK's
 * libhostguestmsg (on a host) or libguesthostmsg (in a guest) does (spec:
 * guest-host-protocol.md, sections 1 and 3). Written for this project from
 * the spec; libc only.
 *
 *   host_tool -a OWN_ADDR [-d DEST_ADDR [-i DEST_INSTANCE] [-m TEXT]]
 *             [-e] [-n COUNT] [-t SECONDS] [-r]
 *
 * It binds a datagram socket at the abstract OWN_ADDR (address length
 * sizeof(sa_family_t) + 1 + strlen(name), no trailing NUL). With -d it sends
 * to the local agent's abstract `cgcs.messaging`
 *
 *   { "version": 2, "dest_addr": "DEST_ADDR", "dest_instance": "DEST_INSTANCE",
 *     "data": { "version": 2, "msg_type": "ping", "text": "TEXT" } }
 *
 * (dest_instance only with -i: a host-side tool names the guest, a guest
 * program does not). Then it receives datagrams into a 4096-byte buffer and
 * prints one line per message on stdout:
 *
 *   ready
 *   sent <dest_addr> <dest_instance or ->
 *   recv <source_addr> <source_instance or -> <data as received>
 *   replied <dest_addr> <dest_instance or ->     (with -e)
 *   ignored <why>
 *   raw <length> <sender> <bytes>                 (with -r)
 *   truncated <length>
 *
 * With -e it answers every message it accepts, to its source_addr (and
 * source_instance, when there is one), with
 * { "version": 2, "msg_type": "reply", "text": <the text received> }.
 * It exits 0 after COUNT accepted messages or SECONDS seconds, whichever
 * comes first (default: never).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dgram.h"
#include "minijson.h"

#define AGENT_ADDR "cgcs.messaging"
#define RECV_BUF 4096 /* the original libraries' receive buffer */
#define SEND_BUF 16384
#define MAX_ADDR 15   /* application addresses: 16 bytes with the NUL */

static void send_msg(int fd, const char *dest_addr, const char *dest_instance,
                     const char *msg_type, const char *text)
{
    char buf[SEND_BUF];
    mj_out o = {buf, 0, sizeof buf, 0};
    struct sockaddr_un to;
    socklen_t len = abstract_addr(&to, AGENT_ADDR);
    mj_lit(&o, "{ \"version\": 2, \"dest_addr\": ");
    mj_quote(&o, dest_addr);
    if (dest_instance != NULL) {
        mj_lit(&o, ", \"dest_instance\": ");
        mj_quote(&o, dest_instance);
    }
    mj_lit(&o, ", \"data\": { \"version\": 2, \"msg_type\": ");
    mj_quote(&o, msg_type);
    mj_lit(&o, ", \"text\": ");
    mj_quote(&o, text);
    mj_lit(&o, " } }");
    if (o.failed) {
        fprintf(stderr, "host_tool: message too long to build\n");
        exit(2);
    }
    if (sendto(fd, buf, o.len, 0, (struct sockaddr *)&to, len) < 0)
        die("sendto cgcs.messaging");
}

/* 1 when the message was accepted. */
static int handle(int fd, const char *buf, size_t n, int echo)
{
    mj_span msg, data;
    char source[64], instance[64], text[RECV_BUF * 2];
    long version;
    int has_instance;

    if (!mj_valid(buf, buf + n)) {
        printf("ignored not JSON\n");
        return 0;
    }
    msg.p = mj_ws(buf, buf + n);
    msg.end = mj_skip(msg.p, buf + n, 0);
    if (!mj_is_object(msg)) {
        printf("ignored not an object\n");
        return 0;
    }
    if (!mj_get_int(msg, "version", &version) || version != 2) {
        printf("ignored version is not the integer 2\n");
        return 0;
    }
    if (!mj_get_str(msg, "source_addr", source, sizeof source) || source[0] == '\0' ||
        strlen(source) > MAX_ADDR) {
        printf("ignored no usable source_addr\n");
        return 0;
    }
    if (!mj_get(msg, "data", &data) || !mj_is_object(data)) {
        printf("ignored no data object\n");
        return 0;
    }
    has_instance = mj_get_str(msg, "source_instance", instance, sizeof instance);
    printf("recv %s %s ", source, has_instance ? instance : "-");
    fwrite(data.p, 1, (size_t)(data.end - data.p), stdout);
    printf("\n");
    if (echo) {
        if (!mj_get_str(data, "text", text, sizeof text))
            strcpy(text, "");
        send_msg(fd, source, has_instance ? instance : NULL, "reply", text);
        printf("replied %s %s\n", source, has_instance ? instance : "-");
    }
    return 1;
}

static int on_datagram(int fd, const char *buf, size_t n, void *echo)
{
    return handle(fd, buf, n, *(int *)echo);
}

static void usage(void)
{
    fprintf(stderr, "usage: host_tool -a OWN_ADDR [-d DEST_ADDR [-i DEST_INSTANCE] [-m TEXT]] "
                    "[-e] [-n COUNT] [-t SECONDS] [-r]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *own_name = NULL, *dest_addr = NULL, *dest_instance = NULL, *text = "ping";
    struct sockaddr_un own;
    socklen_t own_len;
    double seconds = -1;
    long count = -1;
    int echo = 0, raw = 0, opt, fd;
    char buf[RECV_BUF];

    dgram_program = "host_tool";
    while ((opt = getopt(argc, argv, "a:d:i:m:en:t:r")) != -1) {
        switch (opt) {
        case 'a': own_name = optarg; break;
        case 'd': dest_addr = optarg; break;
        case 'i': dest_instance = optarg; break;
        case 'm': text = optarg; break;
        case 'e': echo = 1; break;
        case 'n': count = atol(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'r': raw = 1; break;
        default: usage();
        }
    }
    if (own_name == NULL || strlen(own_name) == 0 || strlen(own_name) > MAX_ADDR ||
        optind != argc || (dest_addr == NULL && dest_instance != NULL))
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);

    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    own_len = abstract_addr(&own, own_name);
    if (bind(fd, (struct sockaddr *)&own, own_len) < 0)
        die("bind");
    printf("ready\n");
    if (dest_addr != NULL) {
        send_msg(fd, dest_addr, dest_instance, "ping", text);
        printf("sent %s %s\n", dest_addr, dest_instance ? dest_instance : "-");
    }

    dgram_loop(fd, buf, sizeof buf, seconds, count, raw, on_datagram, &echo);
    close(fd);
    return 0;
}
