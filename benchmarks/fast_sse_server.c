/* fast_sse_server.c: a small loopback HTTP/1.1 server that streams OpenAI-style SSE (vLLM shape).
 *
 * Single thread, epoll, non-blocking sockets, keep-alive. POST /v1/chat/completions and /v1/completions
 * stream max_tokens chunks (one token per chunk, finish_reason on the last, a usage chunk, [DONE]) as
 * HTTP chunked transfer encoding. GET /v1/models answers a model list, GET /stats counters as JSON,
 * GET /reset zeroes the counters.
 *
 *   fast_sse_server [--port P] [--ttft-ms T] [--itl-ms I] [--log PATH] [--quiet]
 *
 * --itl-ms 0 (and --ttft-ms 0) sends as fast as the sockets take it. Otherwise the first token goes out
 * T ms after the request was read, then one token every I ms; a timerfd holds the earliest planned send,
 * and every send records its lateness (actual - planned) in a 10 us histogram. At exit (SIGINT/SIGTERM)
 * it prints its timing accuracy and CPU time to stderr; /stats gives the same live.
 *
 * --log PATH: the truth log, one line per streamed request (written when it ends, flushed at exit):
 *   id chat marker prompt_tokens max_tokens t_req t_first t_last tokens status
 * times in seconds on CLOCK_MONOTONIC (the clock of Python's time.perf_counter / perf_counter_ns on
 * Linux): t_req when the whole request had been read, t_first / t_last when the write holding the first /
 * last token had been handed to the kernel in full (-1: never); tokens sent; status done or closed (the
 * connection went away mid-stream). marker: the first 16 digits of agentperf's phase marker, decoded from
 * the prompt (completions: the first 16 token ids, default token_id_range (100, 4000); chat: the digits
 * after "namespace: "), "-" when there is none.
 *
 * A request without "stream":true gets one JSON answer (no stream) with usage.prompt_tokens, as a
 * server answers agentperf's chat-filler probes.
 *
 * Build: gcc -O2 -o fast_sse_server fast_sse_server.c   (benchmarks/client_perf.py does it for you)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define HIST_BUCKETS 20000 /* 10 us each: 0..200 ms, last bucket = overflow */
#define WBUF_FLUSH 65536

typedef struct conn {
    int fd;
    char *rbuf;
    size_t rlen, rcap;
    char *wbuf;
    size_t wlen, woff, wcap;
    int streaming, chat, want_out;
    long id, left, sent, total, prompt_tokens;
    double next_t; /* planned time of the next token (timed mode) */
    double t_req;  /* when the request was read */
    double t_first, t_last; /* truth: when the first / last token's write completed (-1: not yet) */
    int first_pending, last_pending;
    char marker[17];
    int heap_idx;  /* -1 when not in the heap */
} conn;

static double ttft_s = 0.2, itl_s = 0.02;
static int quiet = 0;
static FILE *truth_log;
static volatile sig_atomic_t stop_flag = 0;
static int epfd, tfd;
static conn **heap;
static int heap_n, heap_cap;
static long next_id = 1;
/* counters (reset by /reset) */
static long st_requests, st_events, st_tokens, st_conns_now, st_active, st_max_active;
static double st_active_integral, st_t_last, st_t_reset;
static long hist[HIST_BUCKETS];
static double late_max;
static long late_n;
static long first_hist[HIST_BUCKETS];
static long first_n;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static void active_change(int d) {
    double t = now_s();
    st_active_integral += st_active * (t - st_t_last);
    st_t_last = t;
    st_active += d;
    if (st_active > st_max_active) st_max_active = st_active;
}

/* ---- min-heap on next_t ---- */
static void heap_swap(int a, int b) {
    conn *t = heap[a];
    heap[a] = heap[b];
    heap[b] = t;
    heap[a]->heap_idx = a;
    heap[b]->heap_idx = b;
}
static void heap_up(int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (heap[p]->next_t <= heap[i]->next_t) break;
        heap_swap(p, i);
        i = p;
    }
}
static void heap_down(int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_n && heap[l]->next_t < heap[m]->next_t) m = l;
        if (r < heap_n && heap[r]->next_t < heap[m]->next_t) m = r;
        if (m == i) break;
        heap_swap(i, m);
        i = m;
    }
}
static void heap_push(conn *c) {
    if (heap_n == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 1024;
        heap = realloc(heap, heap_cap * sizeof(conn *));
    }
    heap[heap_n] = c;
    c->heap_idx = heap_n++;
    heap_up(c->heap_idx);
}
static void heap_remove(conn *c) {
    int i = c->heap_idx;
    if (i < 0) return;
    c->heap_idx = -1;
    heap_n--;
    if (i != heap_n) {
        heap[i] = heap[heap_n];
        heap[i]->heap_idx = i;
        heap_down(i);
        heap_up(i);
    }
}

static void arm_timer(void) {
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (heap_n) {
        double t = heap[0]->next_t;
        if (t <= 0) t = 1e-9;
        its.it_value.tv_sec = (time_t)t;
        its.it_value.tv_nsec = (long)((t - (double)(time_t)t) * 1e9);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* ---- output ---- */
static void wput(conn *c, const char *s, size_t n) {
    if (c->wlen + n > c->wcap) {
        while (c->wlen + n > c->wcap) c->wcap = c->wcap ? c->wcap * 2 : 16384;
        c->wbuf = realloc(c->wbuf, c->wcap);
    }
    memcpy(c->wbuf + c->wlen, s, n);
    c->wlen += n;
}

/* one SSE event as one HTTP chunk */
static void put_event(conn *c, const char *payload, int n) {
    char head[32];
    int h = snprintf(head, sizeof head, "%x\r\n", n + 8);
    wput(c, head, h);
    wput(c, "data: ", 6);
    wput(c, payload, n);
    wput(c, "\n\n\r\n", 4);
    st_events++;
}

static void close_conn(conn *c);

static void log_request(conn *c, const char *status) {
    if (!truth_log) return;
    fprintf(truth_log, "%ld %d %s %ld %ld %.9f %.9f %.9f %ld %s\n", c->id, c->chat, c->marker[0] ? c->marker : "-",
            c->prompt_tokens, c->total, c->t_req, c->t_first, c->t_last, c->sent, status);
}

/* the write holding the first / last token is complete: stamp it (and log a finished request) */
static void stamp_sent(conn *c) {
    double t = now_s();
    if (c->first_pending) {
        c->first_pending = 0;
        c->t_first = t;
    }
    if (c->last_pending) {
        c->last_pending = 0;
        c->t_last = t;
        log_request(c, "done");
    }
}

static void set_out(conn *c, int on) {
    if (c->want_out == on) return;
    c->want_out = on;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* returns -1 if the connection died */
static int flush_out(conn *c) {
    while (c->woff < c->wlen) {
        ssize_t w = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_out(c, 1);
                return 0;
            }
            if (errno == EINTR) continue;
            close_conn(c);
            return -1;
        }
        c->woff += (size_t)w;
    }
    c->woff = c->wlen = 0;
    set_out(c, 0);
    if (c->first_pending | c->last_pending) stamp_sent(c);
    return 0;
}

static void put_token(conn *c) {
    char p[320];
    int n;
    int last = c->left == 1;
    const char *fin = last ? "\"length\"" : "null";
    if (c->chat)
        n = snprintf(p, sizeof p,
                     "{\"id\":\"chatcmpl-%ld\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                     "\"model\":\"fast\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok\"},"
                     "\"logprobs\":null,\"finish_reason\":%s}]}",
                     c->id, fin);
    else
        n = snprintf(p, sizeof p,
                     "{\"id\":\"cmpl-%ld\",\"object\":\"text_completion\",\"created\":1700000000,"
                     "\"model\":\"fast\",\"choices\":[{\"index\":0,\"text\":\" tok\",\"logprobs\":null,"
                     "\"finish_reason\":%s,\"stop_reason\":null}]}",
                     c->id, fin);
    put_event(c, p, n);
    if (c->sent == 0) c->first_pending = 1;
    c->left--;
    c->sent++;
    st_tokens++;
    if (c->left == 0) {
        n = snprintf(p, sizeof p,
                     "{\"id\":\"%s-%ld\",\"object\":\"%s\",\"created\":1700000000,\"model\":\"fast\","
                     "\"choices\":[],\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld,"
                     "\"completion_tokens\":%ld}}",
                     c->chat ? "chatcmpl" : "cmpl", c->id, c->chat ? "chat.completion.chunk" : "text_completion",
                     c->prompt_tokens, c->prompt_tokens + c->total, c->total);
        put_event(c, p, n);
        put_event(c, "[DONE]", 6);
        wput(c, "0\r\n\r\n", 5);
        c->last_pending = 1;
        c->streaming = 0;
        active_change(-1);
    }
}

static void put_first(conn *c) {
    if (c->chat) {
        char p[256];
        int n = snprintf(p, sizeof p,
                         "{\"id\":\"chatcmpl-%ld\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                         "\"model\":\"fast\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                         "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}",
                         c->id);
        put_event(c, p, n);
    }
}

static void record_late(long *h, double late) {
    long b = (long)(late / 1e-5);
    if (b < 0) b = 0;
    if (b >= HIST_BUCKETS) b = HIST_BUCKETS - 1;
    h[b]++;
}

/* fast mode: fill the socket until it blocks */
static void pump_fast(conn *c) {
    while (c->streaming) {
        if (c->sent == 0) put_first(c);
        put_token(c);
        if (c->wlen >= WBUF_FLUSH || !c->streaming) {
            if (flush_out(c) < 0) return;
            if (c->want_out) return; /* socket full: continue on EPOLLOUT */
        }
    }
    flush_out(c);
}

static void http_simple(conn *c, int code, const char *ctype, const char *body) {
    char h[256];
    int n = snprintf(h, sizeof h,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nServer: fast_sse_server\r\n\r\n",
                     code, code == 200 ? "OK" : "Not Found", ctype, strlen(body));
    wput(c, h, n);
    wput(c, body, strlen(body));
    flush_out(c);
}

static double hist_pct(long *h, long n, double q) {
    if (n <= 0) return -1;
    long target = (long)(q * (n - 1)) + 1, acc = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        acc += h[i];
        if (acc >= target) return (i + 0.5) * 1e-5;
    }
    return HIST_BUCKETS * 1e-5;
}

static int stats_json(char *out, size_t cap) {
    double t = now_s();
    double integral = st_active_integral + st_active * (t - st_t_last);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return snprintf(out, cap,
                    "{\"t\":%.6f,\"since_reset_s\":%.6f,\"requests\":%ld,\"events\":%ld,\"tokens\":%ld,"
                    "\"active\":%ld,\"max_active\":%ld,\"active_integral\":%.6f,\"conns\":%ld,"
                    "\"late_n\":%ld,\"late_p50_s\":%.6f,\"late_p95_s\":%.6f,\"late_p99_s\":%.6f,"
                    "\"late_max_s\":%.6f,\"first_late_p50_s\":%.6f,\"first_late_p95_s\":%.6f,"
                    "\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,\"ttft_s\":%.6f,\"itl_s\":%.6f}",
                    t, t - st_t_reset, st_requests, st_events, st_tokens, st_active, st_max_active, integral,
                    st_conns_now, late_n, hist_pct(hist, late_n, 0.5), hist_pct(hist, late_n, 0.95),
                    hist_pct(hist, late_n, 0.99), late_max, hist_pct(first_hist, first_n, 0.5),
                    hist_pct(first_hist, first_n, 0.95), ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
                    ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6, ttft_s, itl_s);
}

static void reset_stats(void) {
    st_requests = st_events = st_tokens = 0;
    st_max_active = st_active;
    st_active_integral = 0;
    st_t_last = st_t_reset = now_s();
    memset(hist, 0, sizeof hist);
    memset(first_hist, 0, sizeof first_hist);
    late_n = first_n = 0;
    late_max = 0;
}

static long scan_int_after(const char *body, size_t n, const char *key) {
    const char *p = memmem(body, n, key, strlen(key));
    if (!p) return -1;
    p += strlen(key);
    const char *end = body + n;
    while (p < end && (*p == '"' || *p == ':' || *p == ' ')) p++;
    if (p >= end || *p < '0' || *p > '9') return -1;
    return strtol(p, NULL, 10);
}

/* the first 16 digits of agentperf's phase marker in a request body, or "" */
static void find_marker(const char *body, size_t n, char *out) {
    out[0] = 0;
    const char *pp = memmem(body, n, "\"prompt\"", 8);
    if (pp) { /* token ids: lo + (digit * 37 + i * 11) % (hi - lo), lo = 100 */
        const char *q = memchr(pp, '[', (size_t)(body + n - pp));
        if (!q) return;
        q++;
        for (int i = 0; i < 16; i++) {
            while (q < body + n && (*q == ' ' || *q == ',')) q++;
            if (q >= body + n || *q < '0' || *q > '9') {
                out[0] = 0;
                return;
            }
            char *e;
            long v = strtol(q, &e, 10) - 100 - 11 * i;
            q = e;
            if (v < 0 || v % 37 || v / 37 > 9) {
                out[0] = 0;
                return;
            }
            out[i] = (char)('0' + v / 37);
        }
        out[16] = 0;
        return;
    }
    const char *m = memmem(body, n, "namespace: ", 11);
    if (!m || m + 11 + 16 > body + n) return;
    for (int i = 0; i < 16; i++) {
        char d = m[11 + i];
        if (d < '0' || d > '9') {
            out[0] = 0;
            return;
        }
        out[i] = d;
    }
    out[16] = 0;
}

/* try to handle one complete request in rbuf; returns 1 if one was consumed */
static int handle_request(conn *c) {
    char *hend = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!hend) return 0;
    size_t hlen = (size_t)(hend - c->rbuf) + 4;
    long clen = 0;
    for (char *p = c->rbuf; p < hend;) {
        char *eol = memmem(p, (size_t)(hend - p) + 2, "\r\n", 2);
        if (!eol) break;
        if (eol - p > 15 && strncasecmp(p, "content-length:", 15) == 0) clen = strtol(p + 15, NULL, 10);
        p = eol + 2;
    }
    if (c->rlen < hlen + (size_t)clen) return 0;
    char *body = c->rbuf + hlen;
    int is_post = strncmp(c->rbuf, "POST ", 5) == 0;
    char *path = c->rbuf + (is_post ? 5 : 4);
    size_t consumed = hlen + (size_t)clen;
    if (is_post && (strncmp(path, "/v1/chat/completions", 20) == 0 || strncmp(path, "/v1/completions", 15) == 0)) {
        c->chat = strncmp(path, "/v1/chat/", 9) == 0;
        long mt = scan_int_after(body, (size_t)clen, "\"max_tokens\"");
        c->total = c->left = mt > 0 ? mt : 16;
        c->sent = 0;
        c->id = next_id++;
        /* a rough prompt size: elements of a token-id prompt, else bytes / 4 */
        const char *pp = memmem(body, (size_t)clen, "\"prompt\"", 8);
        long commas = 0;
        if (pp) {
            for (const char *q = pp; q < body + clen && *q != ']'; q++) commas += *q == ',';
            c->prompt_tokens = commas + 1;
        } else {
            c->prompt_tokens = clen / 4;
        }
        if (!memmem(body, (size_t)clen, "\"stream\":true", 13) && !memmem(body, (size_t)clen, "\"stream\": true", 14)) {
            char js[512];
            snprintf(js, sizeof js,
                     "{\"id\":\"%s-%ld\",\"object\":\"%s\",\"created\":1700000000,\"model\":\"fast\","
                     "\"choices\":[{\"index\":0,%s,\"finish_reason\":\"length\"}],"
                     "\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld,\"completion_tokens\":%ld}}",
                     c->chat ? "chatcmpl" : "cmpl", c->id, c->chat ? "chat.completion" : "text_completion",
                     c->chat ? "\"message\":{\"role\":\"assistant\",\"content\":\" tok\"}" : "\"text\":\" tok\"",
                     c->prompt_tokens, c->prompt_tokens + 1, 1L);
            st_requests++;
            http_simple(c, 200, "application/json", js);
            if (c->fd < 0) return 0;
            memmove(c->rbuf, c->rbuf + consumed, c->rlen - consumed);
            c->rlen -= consumed;
            return 1;
        }
        find_marker(body, (size_t)clen, c->marker);
        c->t_first = c->t_last = -1;
        c->first_pending = c->last_pending = 0;
        c->t_req = now_s();
        c->streaming = 1;
        st_requests++;
        active_change(+1);
        static const char hdr[] =
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "Transfer-Encoding: chunked\r\nServer: fast_sse_server\r\n\r\n";
        wput(c, hdr, sizeof hdr - 1);
        memmove(c->rbuf, c->rbuf + consumed, c->rlen - consumed);
        c->rlen -= consumed;
        if (itl_s <= 0 && ttft_s <= 0) {
            pump_fast(c);
        } else {
            flush_out(c);
            c->next_t = c->t_req + ttft_s;
            heap_push(c);
            arm_timer();
        }
        return 1;
    }
    char js[1024];
    if (strncmp(path, "/v1/models", 10) == 0) {
        http_simple(c, 200, "application/json",
                    "{\"object\":\"list\",\"data\":[{\"id\":\"fast\",\"object\":\"model\"}]}");
    } else if (strncmp(path, "/stats", 6) == 0) {
        stats_json(js, sizeof js);
        http_simple(c, 200, "application/json", js);
    } else if (strncmp(path, "/reset", 6) == 0) {
        reset_stats();
        http_simple(c, 200, "application/json", "{\"reset\":true}");
    } else {
        http_simple(c, 404, "application/json", "{\"error\":{\"message\":\"not found\"}}");
    }
    if (c->fd < 0) return 0;
    memmove(c->rbuf, c->rbuf + consumed, c->rlen - consumed);
    c->rlen -= consumed;
    return 1;
}

static void close_conn(conn *c) {
    if (c->fd < 0) return;
    if (c->streaming || c->last_pending) log_request(c, "closed");
    if (c->streaming) active_change(-1);
    c->streaming = 0;
    heap_remove(c);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    st_conns_now--;
    /* freed at the end of the event batch (other events may still point to it) */
}

static conn *dead[65536];
static int ndead;

static void on_readable(conn *c) {
    for (;;) {
        if (c->rcap - c->rlen < 65536) {
            c->rcap = c->rcap ? c->rcap * 2 : 131072;
            c->rbuf = realloc(c->rbuf, c->rcap);
        }
        ssize_t r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (r > 0) {
            c->rlen += (size_t)r;
            continue;
        }
        if (r == 0) {
            close_conn(c);
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        close_conn(c);
        return;
    }
    while (!c->streaming && c->fd >= 0 && handle_request(c)) {
    }
}

static void on_timer(void) {
    uint64_t exp;
    (void)!read(tfd, &exp, sizeof exp);
    double t = now_s();
    while (heap_n && heap[0]->next_t <= t + 2e-5) {
        conn *c = heap[0];
        double late = t - c->next_t;
        if (late < 0) late = 0;
        record_late(hist, late);
        late_n++;
        if (late > late_max) late_max = late;
        if (c->sent == 0) {
            record_late(first_hist, late);
            first_n++;
            put_first(c);
        }
        put_token(c);
        if (c->streaming) {
            c->next_t += itl_s;
            heap_down(0);
        } else {
            heap_remove(c);
        }
        if (flush_out(c) < 0) continue;
        t = now_s();
    }
    arm_timer();
}

static void on_signal(int s) {
    (void)s;
    stop_flag = 1;
}

int main(int argc, char **argv) {
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ttft-ms") && i + 1 < argc) ttft_s = atof(argv[++i]) / 1e3;
        else if (!strcmp(argv[i], "--itl-ms") && i + 1 < argc) itl_s = atof(argv[++i]) / 1e3;
        else if (!strcmp(argv[i], "--log") && i + 1 < argc) {
            truth_log = fopen(argv[++i], "w");
            if (!truth_log) {
                perror("--log");
                return 2;
            }
            setvbuf(truth_log, NULL, _IOFBF, 1 << 20);
            fprintf(truth_log, "id chat marker prompt_tokens max_tokens t_req t_first t_last tokens status\n");
        } else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else {
            fprintf(stderr, "usage: %s [--port P] [--ttft-ms T] [--itl-ms I] [--log PATH] [--quiet]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 8192) < 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t al = sizeof addr;
    getsockname(ls, (struct sockaddr *)&addr, &al);
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    epfd = epoll_create1(0);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &ev);
    static int tfd_tag;
    ev.data.ptr = &tfd_tag;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    reset_stats();
    double t0 = now_s(), cpu0 = cpu_s();
    struct epoll_event evs[1024];
    while (!stop_flag) {
        int n = epoll_wait(epfd, evs, 1024, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == NULL) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *c = calloc(1, sizeof(conn));
                    c->fd = fd;
                    c->heap_idx = -1;
                    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
                    st_conns_now++;
                }
            } else if (p == &tfd_tag) {
                on_timer();
            } else {
                conn *c = p;
                if (c->fd < 0) continue;
                if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c);
                if (c->fd >= 0 && (evs[i].events & EPOLLOUT)) {
                    if (flush_out(c) == 0 && c->fd >= 0 && !c->want_out && c->streaming && c->heap_idx < 0)
                        pump_fast(c);
                    if (c->fd >= 0 && !c->want_out && !c->streaming)
                        while (c->fd >= 0 && handle_request(c)) {
                        }
                }
                if (c->fd < 0 && ndead < 65536) dead[ndead++] = c;
            }
        }
        for (int i = 0; i < ndead; i++) {
            free(dead[i]->rbuf);
            free(dead[i]->wbuf);
            free(dead[i]);
        }
        ndead = 0;
    }
    char js[1024];
    stats_json(js, sizeof js);
    if (truth_log) fclose(truth_log);
    fprintf(stderr, "fast_sse_server exit: wall %.3f s, cpu %.3f s, stats %s\n", now_s() - t0, cpu_s() - cpu0, js);
    return 0;
}
