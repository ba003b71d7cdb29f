/*
 * sg_app: behaves on the wire as the original SDK's sample program
 * `server_group_app` over libservergroup does (spec: guest-host-protocol.md,
 * sections 1, 3 and 4). Written for this project from the spec; libc only.
 *
 *   sg_app [-t SECONDS] [-s SEQ] [-r] [MESSAGE]
 *
 * It binds a datagram socket at the abstract `cgcs.server_grp` (address
 * length sizeof(sa_family_t) + 1 + strlen(name), no trailing NUL), sends
 * MESSAGE as a broadcast if given, sends a status_query with sequence number
 * SEQ (default 1), then receives datagrams into a 4096-byte buffer and
 * prints one line per message on stdout:
 *
 *   ready
 *   broadcast <source_instance> <text>
 *   notification <event_type> <data as received>
 *   status <n> <the joined list [obj,obj,...]>      (on status_response_done)
 *   nack <orig_msg_type> <log_msg>
 *   unknown <msg_type>
 *   ignored <why>                 (what the library would not accept)
 *   raw <length> <sender> <bytes> (with -r: every datagram, before any check)
 *   truncated <length>            (a datagram that did not fit in 4096 bytes)
 *
 * Every message is accepted only if its outer version is the integer 2 and
 * its outer source_addr is `cgcs.server_grp`. status_response messages whose
 * seq is not the latest query's are dropped. It exits 0 after SECONDS
 * seconds (default: never).
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

#define SG_ADDR "cgcs.server_grp"
#define AGENT_ADDR "cgcs.messaging"
#define RECV_BUF 4096     /* the original library's receive buffer */
#define SEND_BUF 16384
#define STATUS_MAX (1 << 20)

static void send_to_agent(int fd, const char *inner)
{
    char buf[SEND_BUF];
    mj_out o = {buf, 0, sizeof buf, 0};
    struct sockaddr_un to;
    socklen_t len = abstract_addr(&to, AGENT_ADDR);
    mj_lit(&o, "{ \"version\": 2, \"dest_addr\": ");
    mj_quote(&o, SG_ADDR);
    mj_lit(&o, ", \"data\": ");
    mj_lit(&o, inner);
    mj_lit(&o, " }");
    if (o.failed) {
        fprintf(stderr, "sg_app: message too long to build\n");
        exit(2);
    }
    if (sendto(fd, buf, o.len, 0, (struct sockaddr *)&to, len) < 0)
        die("sendto cgcs.messaging");
}

static void send_broadcast(int fd, const char *text)
{
    char buf[SEND_BUF];
    mj_out o = {buf, 0, sizeof buf, 0};
    mj_lit(&o, "{ \"version\": 2, \"msg_type\": \"broadcast\", \"data\": ");
    mj_quote(&o, text);
    mj_lit(&o, " }");
    if (o.failed) {
        fprintf(stderr, "sg_app: broadcast text too long to build\n");
        exit(2);
    }
    send_to_agent(fd, buf);
    printf("sent broadcast %zu\n", strlen(text));
}

static void send_status_query(int fd, long seq)
{
    char buf[128];
    snprintf(buf, sizeof buf, "{ \"version\": 2, \"msg_type\": \"status_query\", \"seq\": %ld }",
             seq);
    send_to_agent(fd, buf);
    printf("sent status_query %ld\n", seq);
}

/* The status responses collected for the latest query. */
static char *status_buf;
static size_t status_len;
static int status_count;

static void status_reset(void)
{
    status_len = 0;
    status_count = 0;
    status_buf[0] = '\0';
}

static void status_add(mj_span obj)
{
    size_t n = (size_t)(obj.end - obj.p);
    if (status_len + n + 2 >= STATUS_MAX) {
        printf("ignored status list too long\n");
        return;
    }
    status_buf[status_len++] = status_count ? ',' : '[';
    memcpy(status_buf + status_len, obj.p, n);
    status_len += n;
    status_buf[status_len] = '\0';
    status_count++;
}

static void print_span(mj_span v)
{
    fwrite(v.p, 1, (size_t)(v.end - v.p), stdout);
}

static void handle(const char *buf, size_t n, long seq)
{
    mj_span msg = {buf, buf + n}, v, data;
    char source[64], msg_type[64], text[RECV_BUF * 2], other[RECV_BUF];
    long version, inner_seq;

    if (!mj_valid(buf, buf + n)) {
        printf("ignored not JSON\n");
        return;
    }
    msg.p = mj_ws(buf, buf + n);
    if (!mj_is_object(msg)) {
        printf("ignored not an object\n");
        return;
    }
    msg.end = mj_skip(msg.p, buf + n, 0);
    if (!mj_get_int(msg, "version", &version) || version != 2) {
        printf("ignored version is not the integer 2\n");
        return;
    }
    if (!mj_get_str(msg, "source_addr", source, sizeof source) || strcmp(source, SG_ADDR) != 0) {
        printf("ignored source_addr is not %s\n", SG_ADDR);
        return;
    }
    if (!mj_get(msg, "data", &data) || !mj_is_object(data)) {
        printf("ignored no data object\n");
        return;
    }
    if (!mj_get_str(data, "msg_type", msg_type, sizeof msg_type)) {
        printf("ignored no msg_type\n");
        return;
    }
    if (strcmp(msg_type, "broadcast") == 0) {
        if (!mj_get_str(data, "data", text, sizeof text)) {
            printf("ignored broadcast without text\n");
            return;
        }
        if (!mj_get_str(data, "source_instance", other, sizeof other))
            strcpy(other, "-");
        printf("broadcast %s %s\n", other, text);
    } else if (strcmp(msg_type, "notification") == 0) {
        if (!mj_get(data, "data", &v) || !mj_is_object(v) ||
            !mj_get_str(v, "event_type", other, sizeof other)) {
            printf("ignored notification without event_type\n");
            return;
        }
        printf("notification %s ", other);
        print_span(v);
        printf("\n");
    } else if (strcmp(msg_type, "status_response") == 0) {
        if (!mj_get_int(data, "seq", &inner_seq) || inner_seq != seq) {
            printf("ignored status_response of another seq\n");
            return;
        }
        if (!mj_get(data, "data", &v) || !mj_is_object(v)) {
            printf("ignored status_response without data\n");
            return;
        }
        status_add(v);
    } else if (strcmp(msg_type, "status_response_done") == 0) {
        if (!mj_get_int(data, "seq", &inner_seq) || inner_seq != seq) {
            printf("ignored status_response_done of another seq\n");
            return;
        }
        printf("status %d %s]\n", status_count, status_count ? status_buf : "[");
        status_reset();
    } else if (strcmp(msg_type, "nack") == 0) {
        if (!mj_get_str(data, "orig_msg_type", text, sizeof text))
            strcpy(text, "-");
        if (!mj_get_str(data, "log_msg", other, sizeof other))
            strcpy(other, "-");
        printf("nack %s %s\n", text, other);
    } else {
        printf("unknown %s\n", msg_type);
    }
}

static int on_datagram(int fd, const char *buf, size_t n, void *seq)
{
    (void)fd;
    handle(buf, n, *(long *)seq);
    return 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: sg_app [-t SECONDS] [-s SEQ] [-r] [MESSAGE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct sockaddr_un own;
    socklen_t own_len;
    double seconds = -1;
    long seq = 1;
    int raw = 0, opt, fd;
    char buf[RECV_BUF];

    dgram_program = "sg_app";
    while ((opt = getopt(argc, argv, "t:s:r")) != -1) {
        switch (opt) {
        case 't': seconds = atof(optarg); break;
        case 's': seq = atol(optarg); break;
        case 'r': raw = 1; break;
        default: usage();
        }
    }
    if (argc - optind > 1)
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    status_buf = malloc(STATUS_MAX);
    if (status_buf == NULL)
        die("malloc");
    status_reset();

    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    own_len = abstract_addr(&own, SG_ADDR);
    if (bind(fd, (struct sockaddr *)&own, own_len) < 0)
        die("bind cgcs.server_grp");
    printf("ready\n");
    if (optind < argc)
        send_broadcast(fd, argv[optind]);
    send_status_query(fd, seq);

    dgram_loop(fd, buf, sizeof buf, seconds, -1, raw, on_datagram, &seq);
    close(fd);
    free(status_buf);
    return 0;
}
