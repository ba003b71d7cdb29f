/*
 * minijson.h: just enough JSON for the compatibility programs (sg_app.c,
 * host_tool.c). Written for this project from the protocol spec
 * (../shared/specs/guest-host-protocol.md); libc only.
 *
 * Reading works on spans of the received bytes: mj_valid() checks that a
 * buffer is exactly one JSON value, mj_get() finds a member of an object
 * (top level of that object only, so a "version" inside "data" is never
 * taken for the outer one), mj_int()/mj_str() read an integer or a string.
 * Writing follows json-c's default ("spaced") output, which the original
 * libraries sent: `{ "key": value, "key": value }`, and json-c's string
 * escaping, which also escapes '/' as "\/".
 */
#ifndef MINIJSON_H
#define MINIJSON_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MJ_MAX_DEPTH 64

typedef struct {
    const char *p;   /* first byte of the value */
    const char *end; /* one past its last byte */
} mj_span;

static const char *mj_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at an opening quote: one past the closing quote, or NULL. */
static const char *mj_string_end(const char *p, const char *e)
{
    if (p >= e || *p != '"')
        return NULL;
    for (p++; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c == '\\') {
            if (p + 1 >= e)
                return NULL;
            p++;
        }
    }
    return NULL;
}

static int mj_is_number_char(char c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* One past the value that starts at p (after white space), or NULL. */
static const char *mj_skip(const char *p, const char *e, int depth)
{
    p = mj_ws(p, e);
    if (p >= e || depth > MJ_MAX_DEPTH)
        return NULL;
    switch (*p) {
    case '"':
        return mj_string_end(p, e);
    case '{':
        p = mj_ws(p + 1, e);
        if (p < e && *p == '}')
            return p + 1;
        for (;;) {
            p = mj_string_end(mj_ws(p, e), e);
            if (p == NULL)
                return NULL;
            p = mj_ws(p, e);
            if (p >= e || *p != ':')
                return NULL;
            p = mj_skip(p + 1, e, depth + 1);
            if (p == NULL)
                return NULL;
            p = mj_ws(p, e);
            if (p >= e)
                return NULL;
            if (*p == '}')
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    case '[':
        p = mj_ws(p + 1, e);
        if (p < e && *p == ']')
            return p + 1;
        for (;;) {
            p = mj_skip(p, e, depth + 1);
            if (p == NULL)
                return NULL;
            p = mj_ws(p, e);
            if (p >= e)
                return NULL;
            if (*p == ']')
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    default: {
        static const char *const literals[] = {"true", "false", "null"};
        size_t i;
        const char *q = p;
        for (i = 0; i < 3; i++) {
            size_t n = strlen(literals[i]);
            if ((size_t)(e - p) >= n && memcmp(p, literals[i], n) == 0)
                return p + n;
        }
        while (q < e && mj_is_number_char(*q))
            q++;
        return q > p ? q : NULL;
    }
    }
}

/* 1 when [p, e) is exactly one JSON value (white space around allowed). */
static int mj_valid(const char *p, const char *e)
{
    const char *q = mj_skip(p, e, 0);
    return q != NULL && mj_ws(q, e) == e;
}

/* 1 when `v` is an object. */
static int mj_is_object(mj_span v)
{
    return v.p < v.end && *v.p == '{';
}

static int mj_is_string(mj_span v)
{
    return v.p < v.end && *v.p == '"';
}

/*
 * The member `key` of the object `obj` (a span starting at '{'); 1 when
 * found. Keys are compared byte for byte (the keys we look for have no
 * escapes). The first occurrence wins.
 */
static int mj_get(mj_span obj, const char *key, mj_span *out)
{
    const char *p = obj.p, *e = obj.end;
    size_t klen = strlen(key);
    if (!mj_is_object(obj))
        return 0;
    p = mj_ws(p + 1, e);
    if (p < e && *p == '}')
        return 0;
    for (;;) {
        const char *ks = mj_ws(p, e), *ke = mj_string_end(ks, e), *vs, *ve;
        if (ke == NULL)
            return 0;
        p = mj_ws(ke, e);
        if (p >= e || *p != ':')
            return 0;
        vs = mj_ws(p + 1, e);
        ve = mj_skip(vs, e, 1);
        if (ve == NULL)
            return 0;
        if ((size_t)(ke - ks) == klen + 2 && memcmp(ks + 1, key, klen) == 0) {
            out->p = vs;
            out->end = ve;
            return 1;
        }
        p = mj_ws(ve, e);
        if (p >= e || *p != ',')
            return 0;
        p++;
    }
}

/* 1 when `v` is an integer token (not a string, not a fraction). */
static int mj_int(mj_span v, long *out)
{
    char tmp[32];
    char *stop;
    size_t n = (size_t)(v.end - v.p), i;
    if (n == 0 || n >= sizeof tmp)
        return 0;
    for (i = 0; i < n; i++)
        if (!((v.p[i] >= '0' && v.p[i] <= '9') || (i == 0 && v.p[i] == '-')))
            return 0;
    memcpy(tmp, v.p, n);
    tmp[n] = '\0';
    *out = strtol(tmp, &stop, 10);
    return *stop == '\0';
}

static int mj_hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

/*
 * The string `v` unescaped into `out` (NUL-terminated, UTF-8); its length,
 * or -1 when `v` is not a string, does not fit in `cap` bytes, or holds a
 * NUL character.
 */
static long mj_str(mj_span v, char *out, size_t cap)
{
    const char *p, *e;
    size_t n = 0;
    if (!mj_is_string(v) || v.end - v.p < 2 || cap == 0)
        return -1;
    p = v.p + 1;
    e = v.end - 1;
    while (p < e) {
        unsigned cp;
        char c = *p++;
        if (c != '\\') {
            if (n + 1 >= cap)
                return -1;
            out[n++] = c;
            continue;
        }
        if (p >= e)
            return -1;
        c = *p++;
        switch (c) {
        case '"': case '\\': case '/': cp = (unsigned char)c; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (e - p < 4 || !mj_hex4(p, &cp))
                return -1;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u' || !mj_hex4(p + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1;
            }
            break;
        default:
            return -1;
        }
        if (cp == 0)
            return -1;
        if (n + 5 >= cap)
            return -1;
        if (cp < 0x80) {
            out[n++] = (char)cp;
        } else if (cp < 0x800) {
            out[n++] = (char)(0xC0 | (cp >> 6));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[n++] = (char)(0xE0 | (cp >> 12));
            out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[n++] = (char)(0xF0 | (cp >> 18));
            out[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[n] = '\0';
    return (long)n;
}

/* The string member `key` of `obj` into `out`; 1 when it is there and fits. */
static int mj_get_str(mj_span obj, const char *key, char *out, size_t cap)
{
    mj_span v;
    return mj_get(obj, key, &v) && mj_str(v, out, cap) >= 0;
}

static int mj_get_int(mj_span obj, const char *key, long *out)
{
    mj_span v;
    return mj_get(obj, key, &v) && mj_int(v, out);
}

/* --- writing, as json-c's json_object_to_json_string() did ------------------- */

typedef struct {
    char *buf;
    size_t len;
    size_t cap;
    int failed; /* the text did not fit */
} mj_out;

static void mj_raw(mj_out *o, const char *s, size_t n)
{
    if (o->failed || o->len + n + 1 > o->cap) {
        o->failed = 1;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void mj_lit(mj_out *o, const char *s)
{
    mj_raw(o, s, strlen(s));
}

/* A JSON string with json-c's escapes: \" \\ \/ \b \f \n \r \t, \u00XX below 0x20. */
static void mj_quote(mj_out *o, const char *s)
{
    mj_raw(o, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': mj_lit(o, "\\\""); break;
        case '\\': mj_lit(o, "\\\\"); break;
        case '/': mj_lit(o, "\\/"); break;
        case '\b': mj_lit(o, "\\b"); break;
        case '\f': mj_lit(o, "\\f"); break;
        case '\n': mj_lit(o, "\\n"); break;
        case '\r': mj_lit(o, "\\r"); break;
        case '\t': mj_lit(o, "\\t"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                mj_lit(o, esc);
            } else {
                mj_raw(o, (const char *)s, 1);
            }
        }
    }
    mj_raw(o, "\"", 1);
}

#endif
