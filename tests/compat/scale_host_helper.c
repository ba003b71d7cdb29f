/*
 * scale_host_helper: behaves on the wire as the original host-side scaling
 * helper over libhostguestmsg does (seed 003; spec: guest-host-protocol.md,
 * sections 1, 3 and 5). Written for this project from the spec; libc only.
 *
 *   scale_host_helper -i INSTANCE -d down|up [-c CPU] [-T TIMEOUT_MS]
 *                     [-t SECONDS] [-x DATA]
 *
 * On a host, it binds a datagram socket at the abstract `scale-<hex>`, <hex>
 * taken from INSTANCE (`instance-<hex>`), and sends to the host agent's
 * abstract `cgcs.messaging`
 *
 *   { "version": 2, "dest_addr": "cgcs.scale", "dest_instance": "INSTANCE",
 *     "data": { "version": 2, "msg_type": "scale_request", "timeout_ms": 9000,
 *               "resource": "cpu", "direction": "down" } }
 *
 * (for up, with -c CPU, also "online_cpu": CPU; with -x, DATA is sent as
 * the data object instead, to send what the guest must refuse). It then
 * waits for the reply: a message whose outer version is 2, whose
 * source_addr is `cgcs.scale` and whose source_instance is INSTANCE (others
 * are printed as "ignored <why>"), and prints
 *
 *   ready
 *   sent <instance> <data sent>
 *   reply <source_instance> <data as received>
 *   rtt <seconds from just before the send to the reply's arrival>
 *
 * and exits 0. With no reply within SECONDS (default 10, the original's
 * budget) it prints "timeout" on stderr and exits 1.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "dgram.h"
#include "minijson.h"

#define AGENT_ADDR "cgcs.messaging"
#define SCALE_ADDR "cgcs.scale"
#define RECV_BUF 4096 /* the original libraries' receive buffer */
#define SEND_BUF 8192
#define MAX_INSTANCE 20

static const char *instance;
static int got_reply;
static double sent_at;

static int handle(int fd, const char *buf, size_t n, void *ctx)
{
    mj_span msg, data;
    char source[64], from[64];
    long version;
    (void)fd;
    (void)ctx;

    if (!mj_valid(buf, buf + n)) {
        printf("ignored not JSON\n");
        return 0;
    }
    msg.p = mj_ws(buf, buf + n);
    msg.end = mj_skip(msg.p, buf + n, 0);
    if (!mj_is_object(msg) || !mj_get_int(msg, "version", &version) || version != 2) {
        printf("ignored not a version 2 envelope\n");
        return 0;
    }
    if (!mj_get_str(msg, "source_addr", source, sizeof source) || strcmp(source, SCALE_ADDR) != 0) {
        printf("ignored not from %s\n", SCALE_ADDR);
        return 0;
    }
    if (!mj_get_str(msg, "source_instance", from, sizeof from) || strcmp(from, instance) != 0) {
        printf("ignored not from %s\n", instance);
        return 0;
    }
    if (!mj_get(msg, "data", &data) || !mj_is_object(data)) {
        printf("ignored no data object\n");
        return 0;
    }
    printf("reply %s ", from);
    fwrite(data.p, 1, (size_t)(data.end - data.p), stdout);
    printf("\n");
    printf("rtt %.6f\n", now() - sent_at);
    got_reply = 1;
    return 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: scale_host_helper -i INSTANCE -d down|up [-c CPU] [-T TIMEOUT_MS] "
                    "[-t SECONDS] [-x DATA]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *direction = NULL, *raw_data = NULL;
    char own_name[32], inner[SEND_BUF], buf[SEND_BUF], num[64];
    struct sockaddr_un own, to;
    socklen_t own_len, to_len;
    double seconds = 10;
    long cpu = -1, timeout_ms = 9000;
    int opt, fd;
    mj_out d = {inner, 0, sizeof inner, 0}, o = {buf, 0, sizeof buf, 0};
    char recv_buf[RECV_BUF];

    dgram_program = "scale_host_helper";
    while ((opt = getopt(argc, argv, "i:d:c:T:t:x:")) != -1) {
        switch (opt) {
        case 'i': instance = optarg; break;
        case 'd': direction = optarg; break;
        case 'c': cpu = atol(optarg); break;
        case 'T': timeout_ms = atol(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'x': raw_data = optarg; break;
        default: usage();
        }
    }
    if (instance == NULL || strncmp(instance, "instance-", 9) != 0 || strlen(instance) < 10 ||
        strlen(instance) > MAX_INSTANCE || optind != argc)
        usage();
    if (raw_data == NULL && (direction == NULL ||
                             (strcmp(direction, "down") != 0 && strcmp(direction, "up") != 0) ||
                             (strcmp(direction, "up") == 0 && cpu < 0)))
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* scale-<hex>: at most 6 + 11 characters; the spec keeps addresses to 15. */
    snprintf(own_name, sizeof own_name, "scale-%s", instance + 9);
    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    own_len = abstract_addr(&own, own_name);
    if (bind(fd, (struct sockaddr *)&own, own_len) < 0)
        die("bind");
    printf("ready\n");

    if (raw_data != NULL) {
        mj_lit(&d, raw_data);
    } else {
        mj_lit(&d, "{ \"version\": 2, \"msg_type\": \"scale_request\", \"timeout_ms\": ");
        snprintf(num, sizeof num, "%ld", timeout_ms);
        mj_lit(&d, num);
        mj_lit(&d, ", \"resource\": \"cpu\", \"direction\": ");
        mj_quote(&d, direction);
        if (cpu >= 0) {
            snprintf(num, sizeof num, ", \"online_cpu\": %ld", cpu);
            mj_lit(&d, num);
        }
        mj_lit(&d, " }");
    }
    mj_lit(&o, "{ \"version\": 2, \"dest_addr\": ");
    mj_quote(&o, SCALE_ADDR);
    mj_lit(&o, ", \"dest_instance\": ");
    mj_quote(&o, instance);
    mj_lit(&o, ", \"data\": ");
    mj_lit(&o, inner);
    mj_lit(&o, " }");
    if (d.failed || o.failed) {
        fprintf(stderr, "scale_host_helper: request too long to build\n");
        return 2;
    }
    to_len = abstract_addr(&to, AGENT_ADDR);
    sent_at = now();
    if (sendto(fd, buf, o.len, 0, (struct sockaddr *)&to, to_len) < 0)
        die("sendto cgcs.messaging");
    printf("sent %s %s\n", instance, inner);

    dgram_loop(fd, recv_buf, sizeof recv_buf, seconds, 1, 0, handle, NULL);
    close(fd);
    if (!got_reply) {
        fprintf(stderr, "timeout\n");
        return 1;
    }
    return 0;
}
