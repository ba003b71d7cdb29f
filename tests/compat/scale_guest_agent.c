/*
 * scale_guest_agent: behaves on the wire as the original SDK's guest scale
 * agent (`guest_scale_agent`, seed 003) does (spec: guest-host-protocol.md,
 * sections 1, 3 and 5). Written for this project from the spec; libc only.
 *
 *   scale_guest_agent -s SYSFS_ROOT [-H HELPER] [-n COUNT] [-t SECONDS]
 *
 * It binds a datagram socket at the abstract `cgcs.scale` and answers each
 * `scale_request` that comes from the guest agent (outer version 2, a
 * source_addr, a data object) with a reply sent back through the guest
 * agent's abstract `cgcs.messaging` to the request's source_addr:
 *
 *   down: run `HELPER --cpu_del`; its exit status is the CPU to take offline.
 *         A helper that is missing (127), exits 0, names a CPU that is not
 *         online, or exits 200 or more (an error, not a CPU), or dies of a
 *         signal: the highest-numbered online CPU instead. Never CPU 0. Write
 *         0 to SYSFS_ROOT/devices/system/cpu/cpuN/online and reply
 *         { "version": 2, "resource": "cpu", "direction": "down",
 *           "result": "success", "offline_cpu": N, "online_cpus": [ ... ] }
 *   up:   write 1 to cpuN/online for N = online_cpu, then run
 *         `HELPER --cpu_add N [0,1,...]` (the online list as compact JSON); a
 *         helper failure is only printed. Reply with "online_cpu": N.
 *   a failure: { ..., "result": "fail", "err_msg": "..." }
 *   a request it cannot use: { "version": 2, "msg_type": "nack", "log_msg": "..." }
 *
 * The online list in replies is read from SYSFS_ROOT/devices/system/cpu/online
 * (ranges like "0-2,5"), as the original did. Under a SYSFS_ROOT other than
 * "/" (a directory of a test's own, never the machine's /sys) no kernel keeps
 * that file, so the agent rewrites `online` and `offline` from `present` and
 * the cpuN/online files after each change, as the kernel would. Like the
 * original, it does not enforce timeout_ms. Output, one line per event:
 *
 *   ready
 *   request <source_addr> <data as received>
 *   helper <argument> <exit status or "signal N" or "missing">
 *   replied <dest_addr> <reply data>
 *   ignored <why>
 *
 * It exits 0 after COUNT requests or SECONDS seconds (default: never).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dgram.h"
#include "minijson.h"

#define SCALE_ADDR "cgcs.scale"
#define AGENT_ADDR "cgcs.messaging"
#define RECV_BUF 4096 /* the original libraries' receive buffer */
#define SEND_BUF 8192
#define MAX_ADDR 15
#define MAX_CPUS 256
#define DEFAULT_HELPER "/usr/sbin/app_scale_helper"

static const char *sysfs_root;
static const char *helper_path = DEFAULT_HELPER;

/* --- the CPU directory ------------------------------------------------------- */

static void cpu_path(char *out, size_t cap, const char *leaf)
{
    const char *root = strcmp(sysfs_root, "/") == 0 ? "" : sysfs_root;
    snprintf(out, cap, "%s/sys/devices/system/cpu/%s", root, leaf);
}

static int read_file(const char *path, char *out, size_t cap)
{
    int fd = open(path, O_RDONLY);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = read(fd, out, cap - 1);
    close(fd);
    if (n < 0)
        return -1;
    out[n] = '\0';
    return 0;
}

static int write_file(const char *path, const char *text, int create)
{
    int fd = open(path, O_WRONLY | O_TRUNC | (create ? O_CREAT : 0), 0644);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = write(fd, text, strlen(text));
    if (close(fd) < 0 || n != (ssize_t)strlen(text))
        return -1;
    return 0;
}

/* Parse a CPU list ("0-2,5", empty: none) into on[]; every call starts from nothing. */
static int parse_cpu_list(const char *text, int *on)
{
    const char *p = text;
    memset(on, 0, sizeof(int) * MAX_CPUS); /* the original forgot this (spec section 6) */
    while (*p == ' ' || *p == '\n')
        p++;
    while (*p && *p != '\n') {
        char *end;
        long lo = strtol(p, &end, 10), hi;
        if (end == p || lo < 0 || lo >= MAX_CPUS)
            return -1;
        hi = lo;
        p = end;
        if (*p == '-') {
            hi = strtol(p + 1, &end, 10);
            if (end == p + 1 || hi < lo || hi >= MAX_CPUS)
                return -1;
            p = end;
        }
        for (; lo <= hi; lo++)
            on[lo] = 1;
        if (*p == ',')
            p++;
        else if (*p && *p != '\n')
            return -1;
    }
    return 0;
}

static void format_cpu_list(const int *on, char *out, size_t cap)
{
    size_t len = 0;
    int i = 0;
    out[0] = '\0';
    while (i < MAX_CPUS) {
        int j;
        if (!on[i]) {
            i++;
            continue;
        }
        for (j = i; j + 1 < MAX_CPUS && on[j + 1]; j++)
            ;
        len += (size_t)snprintf(out + len, cap - len, len ? ",%d" : "%d", i);
        if (j > i)
            len += (size_t)snprintf(out + len, cap - len, "-%d", j);
        i = j + 1;
    }
}

/* The kernel's work in a directory of our own: `online` and `offline` from the cpuN files. */
static void refresh_summary(void)
{
    char path[4096], text[1024], list[1024];
    int present[MAX_CPUS], on[MAX_CPUS], off[MAX_CPUS], i;
    if (strcmp(sysfs_root, "/") == 0)
        return;
    cpu_path(path, sizeof path, "present");
    if (read_file(path, text, sizeof text) < 0 || parse_cpu_list(text, present) < 0)
        return;
    for (i = 0; i < MAX_CPUS; i++) {
        char leaf[32], value[16];
        on[i] = off[i] = 0;
        if (!present[i])
            continue;
        snprintf(leaf, sizeof leaf, "cpu%d/online", i);
        cpu_path(path, sizeof path, leaf);
        /* No online file (cpu0): always online. */
        if (read_file(path, value, sizeof value) < 0 || value[0] == '1')
            on[i] = 1;
        else
            off[i] = 1;
    }
    format_cpu_list(on, list, sizeof list);
    strcat(list, "\n");
    cpu_path(path, sizeof path, "online");
    write_file(path, list, 1);
    format_cpu_list(off, list, sizeof list);
    strcat(list, "\n");
    cpu_path(path, sizeof path, "offline");
    write_file(path, list, 1);
}

static int online_cpus(int *on)
{
    char path[4096], text[1024];
    cpu_path(path, sizeof path, "online");
    if (read_file(path, text, sizeof text) < 0)
        return -1;
    return parse_cpu_list(text, on);
}

static int set_online(int cpu, int online)
{
    char path[4096], leaf[32];
    snprintf(leaf, sizeof leaf, "cpu%d/online", cpu);
    cpu_path(path, sizeof path, leaf);
    if (write_file(path, online ? "1" : "0", 0) < 0)
        return -1;
    refresh_summary();
    return 0;
}

/* --- the helper ------------------------------------------------------------------- */

/* Run the helper with args; its exit status, 127 when missing, -1 killed by a signal. */
static int run_helper(char *const argv[])
{
    pid_t pid;
    int status;
    fflush(stdout);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFSIGNALED(status)) {
        printf("helper %s signal %d\n", argv[1], WTERMSIG(status));
        return -1;
    }
    printf("helper %s %d\n", argv[1], WEXITSTATUS(status));
    return WEXITSTATUS(status);
}

/* --- replies ---------------------------------------------------------------------- */

static void cpus_json(mj_out *o, const int *on, int spaced)
{
    int i, first = 1;
    mj_lit(o, spaced ? "[ " : "[");
    for (i = 0; i < MAX_CPUS; i++) {
        char num[16];
        if (!on[i])
            continue;
        snprintf(num, sizeof num, "%s%d", first ? "" : (spaced ? ", " : ","), i);
        mj_lit(o, num);
        first = 0;
    }
    mj_lit(o, spaced ? " ]" : "]");
}

static void send_reply(int fd, const char *dest, const char *data)
{
    char buf[SEND_BUF];
    mj_out o = {buf, 0, sizeof buf, 0};
    struct sockaddr_un to;
    socklen_t len = abstract_addr(&to, AGENT_ADDR);
    mj_lit(&o, "{ \"version\": 2, \"dest_addr\": ");
    mj_quote(&o, dest);
    mj_lit(&o, ", \"data\": ");
    mj_lit(&o, data);
    mj_lit(&o, " }");
    if (o.failed) {
        fprintf(stderr, "scale_guest_agent: reply too long to build\n");
        exit(2);
    }
    if (sendto(fd, buf, o.len, 0, (struct sockaddr *)&to, len) < 0)
        die("sendto cgcs.messaging");
    printf("replied %s %s\n", dest, data);
}

static void reply_fail(int fd, const char *dest, const char *direction, const char *why)
{
    char buf[SEND_BUF];
    mj_out o = {buf, 0, sizeof buf, 0};
    mj_lit(&o, "{ \"version\": 2, \"resource\": \"cpu\", \"direction\": ");
    mj_quote(&o, direction);
    mj_lit(&o, ", \"result\": \"fail\", \"err_msg\": ");
    mj_quote(&o, why);
    mj_lit(&o, " }");
    send_reply(fd, dest, buf);
}

static void nack(int fd, const char *dest, const char *why)
{
    char buf[SEND_BUF];
    mj_out o = {buf, 0, sizeof buf, 0};
    mj_lit(&o, "{ \"version\": 2, \"msg_type\": \"nack\", \"log_msg\": ");
    mj_quote(&o, why);
    mj_lit(&o, " }");
    send_reply(fd, dest, buf);
}

static void reply_success(int fd, const char *dest, const char *direction, const char *key,
                          int cpu)
{
    char buf[SEND_BUF], num[16];
    mj_out o = {buf, 0, sizeof buf, 0};
    int on[MAX_CPUS];
    if (online_cpus(on) < 0) {
        reply_fail(fd, dest, direction, "cannot read the online CPU list");
        return;
    }
    mj_lit(&o, "{ \"version\": 2, \"resource\": \"cpu\", \"direction\": ");
    mj_quote(&o, direction);
    mj_lit(&o, ", \"result\": \"success\", ");
    mj_quote(&o, key);
    snprintf(num, sizeof num, ": %d", cpu);
    mj_lit(&o, num);
    mj_lit(&o, ", \"online_cpus\": ");
    cpus_json(&o, on, 1);
    mj_lit(&o, " }");
    send_reply(fd, dest, buf);
}

/* --- scaling ---------------------------------------------------------------------- */

static void scale_down(int fd, const char *dest)
{
    char *argv[] = {(char *)helper_path, "--cpu_del", NULL};
    int on[MAX_CPUS], cpu, highest = 0, i, status;
    char why[128];
    if (online_cpus(on) < 0) {
        reply_fail(fd, dest, "down", "cannot read the online CPU list");
        return;
    }
    for (i = 1; i < MAX_CPUS; i++)
        if (on[i])
            highest = i;
    if (access(helper_path, X_OK) == 0) {
        status = run_helper(argv);
    } else {
        printf("helper --cpu_del missing\n");
        status = 127;
    }
    cpu = status;
    if (status <= 0 || status >= 200 || status >= MAX_CPUS || !on[status])
        cpu = highest;
    if (cpu == 0) {
        reply_fail(fd, dest, "down", "only CPU 0 is online, and CPU 0 is never taken offline");
        return;
    }
    if (set_online(cpu, 0) < 0) {
        snprintf(why, sizeof why, "cannot take CPU %d offline: %s", cpu, strerror(errno));
        reply_fail(fd, dest, "down", why);
        return;
    }
    reply_success(fd, dest, "down", "offline_cpu", cpu);
}

static void scale_up(int fd, const char *dest, long cpu)
{
    char list[1024], num[16], why[128];
    char *argv[] = {(char *)helper_path, "--cpu_add", num, list, NULL};
    int on[MAX_CPUS];
    mj_out o = {list, 0, sizeof list, 0};
    if (cpu <= 0 || cpu >= MAX_CPUS) {
        snprintf(why, sizeof why, "CPU %ld cannot be brought online", cpu);
        reply_fail(fd, dest, "up", why);
        return;
    }
    if (set_online((int)cpu, 1) < 0) {
        snprintf(why, sizeof why, "cannot bring CPU %ld online: %s", cpu, strerror(errno));
        reply_fail(fd, dest, "up", why);
        return;
    }
    if (online_cpus(on) == 0 && access(helper_path, X_OK) == 0) {
        snprintf(num, sizeof num, "%ld", cpu);
        cpus_json(&o, on, 0);
        if (run_helper(argv) != 0)
            printf("ignored helper failure after bringing CPU %ld online\n", cpu);
    }
    reply_success(fd, dest, "up", "online_cpu", (int)cpu);
}

/* 1 when the datagram was a request we answered (or nacked). */
static int handle(int fd, const char *buf, size_t n, void *ctx)
{
    mj_span msg, data;
    char source[64], msg_type[64], resource[32], direction[32];
    long version, cpu;
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
    if (!mj_get_str(msg, "source_addr", source, sizeof source) || source[0] == '\0' ||
        strlen(source) > MAX_ADDR) {
        printf("ignored no usable source_addr\n");
        return 0;
    }
    if (!mj_get(msg, "data", &data) || !mj_is_object(data)) {
        printf("ignored no data object\n");
        return 0;
    }
    printf("request %s ", source);
    fwrite(data.p, 1, (size_t)(data.end - data.p), stdout);
    printf("\n");
    if (!mj_get_int(data, "version", &version) || version != 2) {
        nack(fd, source, "the request's version is not 2");
        return 1;
    }
    if (!mj_get_str(data, "msg_type", msg_type, sizeof msg_type) ||
        strcmp(msg_type, "scale_request") != 0) {
        nack(fd, source, "not a scale_request");
        return 1;
    }
    if (!mj_get_str(data, "resource", resource, sizeof resource) || strcmp(resource, "cpu") != 0) {
        nack(fd, source, "the resource is not cpu");
        return 1;
    }
    if (!mj_get_str(data, "direction", direction, sizeof direction)) {
        nack(fd, source, "the request has no direction");
        return 1;
    }
    if (strcmp(direction, "down") == 0) {
        scale_down(fd, source);
    } else if (strcmp(direction, "up") == 0) {
        if (!mj_get_int(data, "online_cpu", &cpu)) {
            nack(fd, source, "a scale up needs online_cpu");
            return 1;
        }
        scale_up(fd, source, cpu);
    } else {
        nack(fd, source, "the direction is neither up nor down");
    }
    return 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: scale_guest_agent -s SYSFS_ROOT [-H HELPER] [-n COUNT] [-t SECONDS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct sockaddr_un own;
    socklen_t own_len;
    double seconds = -1;
    long count = -1;
    int opt, fd;
    char buf[RECV_BUF];

    dgram_program = "scale_guest_agent";
    while ((opt = getopt(argc, argv, "s:H:n:t:")) != -1) {
        switch (opt) {
        case 's': sysfs_root = optarg; break;
        case 'H': helper_path = optarg; break;
        case 'n': count = atol(optarg); break;
        case 't': seconds = atof(optarg); break;
        default: usage();
        }
    }
    if (sysfs_root == NULL || optind != argc)
        usage();
    setvbuf(stdout, NULL, _IOLBF, 0);

    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    own_len = abstract_addr(&own, SCALE_ADDR);
    if (bind(fd, (struct sockaddr *)&own, own_len) < 0)
        die("bind cgcs.scale");
    refresh_summary();
    printf("ready\n");
    dgram_loop(fd, buf, sizeof buf, seconds, count, 0, handle, NULL);
    close(fd);
    return 0;
}
