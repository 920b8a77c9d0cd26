/*
 * media._udpsend.Pacer: what one subscriber connection sends, at most at a rate.
 *
 * Without it, every frame of every forwarded stream leaves as fast as the
 * socket takes it (one GSO sendmsg per frame), and a subscriber link slower
 * than the sum of those bursts queues them at its bottleneck: a shaper's queue
 * that is full drops the tail, and after a drop in bandwidth that tail is the
 * keyframe of the layer just switched to (a keyframe is 5-10 frames' worth at
 * once). A pacer keeps that queue here instead, where it drains at the rate
 * the subscriber's estimate allows, so the link's queue stays short and what
 * the subscriber is sent arrives.
 *
 * Every Down of one connection (media/_fanout.c) shares its Pacer. A Down's
 * flush hands it the batch it protected (pacer_submit): sent at once when
 * nothing waits and the budget covers it, queued otherwise, in the order the
 * batches came, which is the order of their transport-wide numbers (the Downs
 * see to that, media/_udpsend.h). The budget is a token bucket filled at
 * `rate` (bit/s; `boost` while a probe cluster runs, media/probe.py) holding
 * BURST_S of it; drain() sends the head of the queue while it has tokens, in
 * runs of equal-size datagrams (one GSO sendmsg each). Numbered datagrams are
 * logged as sent (media/_sendlog.c) when they leave, not when they were
 * queued: the estimator reads the network's delay, not the pacer's.
 *
 * The queue is bounded two ways: by time (when what waits would take more
 * than MAX_DRAIN_S at the rate, it drains faster: the estimate is too low
 * for what the allocation sends, and the subscriber's feedback must see it),
 * and by bytes (MAX_BYTES: beyond them a batch is dropped, as a full network
 * queue would, and its numbers logged as sent so that the feedback reports
 * them lost). A pacer goes quiet (callback `on_queued`, called when its queue
 * goes from empty to not) and is drained by its owner's task
 * (media/pacing.py) every few milliseconds until empty. The GIL is held
 * throughout.
 */
#include "_udpsend.h"

#include <string.h>

#define BURST_S 0.04
#define BURST_MIN 2500.0
#define MAX_DRAIN_S 0.5
#define MAX_BYTES (1 << 20)
#define FIRST_BYTES (64 * 1024)
#define FIRST_ENTRIES 256

typedef struct {
    UdpOut *out; /* strong: where it goes (the pair may change while it waits) */
    uint32_t off, len;
    long twcc;     /* its transport-wide number, -1 if none */
    int64_t at_us; /* when it was queued */
} Queued;

struct Pacer {
    PyObject_HEAD
    double rate, boost; /* bit/s; rate 0: unpaced */
    double tokens;      /* bytes; may go below 0 by the last datagram sent */
    int64_t at_us;      /* when tokens were last filled */
    SendLog *log;       /* strong: the numbering of what waits; NULL if none */
    PyObject *on_queued;
    unsigned char *buf; /* the waiting datagrams, back to back, from head */
    size_t cap, head, tail;
    Queued *q; /* ring of what waits */
    int qcap, qfirst, qn;
    /* counters */
    unsigned long long paced, dropped, sent_bytes;
    int64_t longest_wait_us;
};

static inline double
pacer_rate(const Pacer *p)
{
    return p->boost > p->rate ? p->boost : p->rate;
}

static void
pacer_fill(Pacer *p, int64_t now)
{
    double rate = pacer_rate(p) / 8.0; /* bytes/s */
    if (p->qn > 0) {
        /* What waits is gone MAX_DRAIN_S after the oldest of it came, whatever the rate. */
        double left = MAX_DRAIN_S - (double)(now - p->q[p->qfirst].at_us) / 1e6;
        double needed = (double)(p->tail - p->head) / (left > 0.01 ? left : 0.01);
        if (needed > rate)
            rate = needed;
    }
    double burst = rate * BURST_S > BURST_MIN ? rate * BURST_S : BURST_MIN;
    double elapsed = (double)(now - p->at_us) / 1e6;
    if (elapsed > 0) {
        p->tokens += elapsed * rate;
        if (p->tokens > burst)
            p->tokens = burst;
    }
    p->at_us = now;
}

static void
pacer_log(SendLog *log, long twcc, size_t len, int64_t now)
{
    if (log != NULL && log->ring != NULL && twcc >= 0)
        sendlog_record(log, (uint16_t)twcc, len, now);
}

/* Send the head of the queue while there are tokens (all of it when unpaced). */
static void
pacer_drain(Pacer *p, int64_t now)
{
    pacer_fill(p, now);
    int unpaced = pacer_rate(p) <= 0;
    while (p->qn > 0 && (unpaced || p->tokens > 0)) {
        Queued *first = &p->q[p->qfirst];
        UdpOut *out = first->out;
        size_t seg = first->len, bytes = 0;
        int count = 0;
        /* A run: one output, equal sizes (the last may be shorter), what the tokens allow. */
        while (count < p->qn && count < MAX_SEGMENTS) {
            Queued *e = &p->q[(p->qfirst + count) % p->qcap];
            if (e->out != out || e->len > seg || bytes + e->len > MAX_BATCH_BYTES)
                break;
            if (count && !unpaced && p->tokens - (double)bytes <= 0)
                break;
            bytes += e->len;
            count++;
            if (e->len < seg)
                break;
        }
        udpout_send_run(out, p->buf + first->off, bytes, seg, count);
        if (!unpaced) /* unpaced sends run up no debt */
            p->tokens -= (double)bytes + (double)count * TRANSPORT_OVERHEAD;
        p->sent_bytes += bytes;
        if (now - first->at_us > p->longest_wait_us)
            p->longest_wait_us = now - first->at_us;
        for (int i = 0; i < count; i++) {
            Queued *e = &p->q[p->qfirst];
            pacer_log(p->log, e->twcc, e->len, now);
            Py_DECREF(e->out);
            e->out = NULL;
            p->qfirst = (p->qfirst + 1) % p->qcap;
            p->qn--;
            p->head += e->len;
        }
    }
    if (p->qn == 0)
        p->head = p->tail = 0;
}

/* Room for `bytes` more in `count` more entries: compacts, grows; 0, or -1 if full. */
static int
pacer_room(Pacer *p, size_t bytes, int count)
{
    if (p->tail + bytes > p->cap && p->head > 0) {
        memmove(p->buf, p->buf + p->head, p->tail - p->head);
        for (int i = 0; i < p->qn; i++)
            p->q[(p->qfirst + i) % p->qcap].off -= (uint32_t)p->head;
        p->tail -= p->head;
        p->head = 0;
    }
    if (p->tail + bytes > p->cap) {
        size_t cap = p->cap ? p->cap : FIRST_BYTES;
        while (cap < p->tail + bytes)
            cap *= 2;
        if (cap > MAX_BYTES)
            return -1;
        unsigned char *buf = PyMem_Realloc(p->buf, cap);
        if (buf == NULL)
            return -1;
        p->buf = buf;
        p->cap = cap;
    }
    if (p->qn + count > p->qcap) {
        int qcap = p->qcap ? p->qcap : FIRST_ENTRIES;
        while (qcap < p->qn + count)
            qcap *= 2;
        Queued *q = PyMem_Malloc((size_t)qcap * sizeof(Queued));
        if (q == NULL)
            return -1;
        for (int i = 0; i < p->qn; i++)
            q[i] = p->q[(p->qfirst + i) % p->qcap];
        PyMem_Free(p->q);
        p->q = q;
        p->qcap = qcap;
        p->qfirst = 0;
    }
    return 0;
}

static void
pacer_set_log(Pacer *p, SendLog *log)
{
    if (log != p->log) {
        Py_XINCREF(log);
        Py_XSETREF(p->log, log);
    }
}

Py_ssize_t
pacer_submit(Pacer *p, UdpOut *out, SendLog *log, const unsigned char *buf, size_t end,
             size_t seg, int count, const long *twcc)
{
    int64_t now = monotonic_us();
    if (p->qn == 0)
        pacer_fill(p, now);
    if (p->qn == 0 && (pacer_rate(p) <= 0 || p->tokens >= (double)end)) {
        Py_ssize_t sent = udpout_send_run(out, (unsigned char *)buf, end, seg, count);
        if (pacer_rate(p) > 0)
            p->tokens -= (double)end;
        p->sent_bytes += end;
        size_t start = 0;
        for (int i = 0; i < count; i++) {
            size_t len = end - start < seg ? end - start : seg;
            pacer_log(log, twcc[i], len, now);
            start += len;
        }
        return sent;
    }
    if (p->qn && p->log != log) {
        /* Another numbering than what waits (the connection was renegotiated): what
         * waits goes first, at once. */
        double rate = p->rate, boost = p->boost;
        p->rate = p->boost = 0;
        pacer_drain(p, now);
        p->rate = rate;
        p->boost = boost;
    }
    pacer_set_log(p, log);
    size_t start = 0;
    if (pacer_room(p, end, count) < 0) {
        p->dropped += (unsigned long long)count;
        for (int i = 0; i < count; i++) {
            size_t len = end - start < seg ? end - start : seg;
            pacer_log(log, twcc[i], len, now); /* lost here, as a full network queue would */
            start += len;
        }
        return 0;
    }
    int was_empty = p->qn == 0;
    memcpy(p->buf + p->tail, buf, end);
    for (int i = 0; i < count; i++) {
        size_t len = end - start < seg ? end - start : seg;
        Queued *e = &p->q[(p->qfirst + p->qn) % p->qcap];
        Py_INCREF(out);
        e->out = out;
        e->off = (uint32_t)(p->tail + start);
        e->len = (uint32_t)len;
        e->twcc = twcc[i];
        e->at_us = now;
        p->qn++;
        start += len;
    }
    p->tail += end;
    p->paced += (unsigned long long)count;
    if (was_empty && p->on_queued != NULL && p->on_queued != Py_None) {
        PyObject *r = PyObject_CallNoArgs(p->on_queued);
        if (r == NULL)
            PyErr_WriteUnraisable(p->on_queued);
        Py_XDECREF(r);
    }
    pacer_drain(p, now);
    return (Py_ssize_t)end;
}

int
pacer_active(const Pacer *p)
{
    return p != NULL && (pacer_rate(p) > 0 || p->qn > 0);
}

/* --- the Python type ------------------------------------------------------- */

static int
Pacer_init(Pacer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    self->rate = self->boost = 0;
    self->tokens = BURST_MIN;
    self->at_us = monotonic_us();
    return 0;
}

static void
Pacer_drop_queue(Pacer *self)
{
    for (int i = 0; i < self->qn; i++) {
        Queued *e = &self->q[(self->qfirst + i) % self->qcap];
        Py_CLEAR(e->out);
    }
    self->qn = self->qfirst = 0;
    self->head = self->tail = 0;
}

static void
Pacer_dealloc(Pacer *self)
{
    Pacer_drop_queue(self);
    Py_CLEAR(self->log);
    Py_CLEAR(self->on_queued);
    PyMem_Free(self->buf);
    PyMem_Free(self->q);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Pacer_drain_method(Pacer *self, PyObject *Py_UNUSED(ignored))
{
    pacer_drain(self, monotonic_us());
    return PyLong_FromLong(self->qn);
}

static PyObject *
Pacer_close(Pacer *self, PyObject *Py_UNUSED(ignored))
{
    /* What waits is sent now (idempotent): the connection is going, or pacing stops. */
    self->rate = self->boost = 0;
    pacer_drain(self, monotonic_us());
    Py_CLEAR(self->on_queued);
    Py_RETURN_NONE;
}

static PyObject *
Pacer_take_longest_wait(Pacer *self, PyObject *Py_UNUSED(ignored))
{
    int64_t longest = self->longest_wait_us;
    if (self->qn > 0) {
        int64_t waiting = monotonic_us() - self->q[self->qfirst].at_us;
        if (waiting > longest)
            longest = waiting;
    }
    self->longest_wait_us = 0;
    return PyFloat_FromDouble((double)longest / 1e6);
}

static int
set_rate(double *field, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a rate");
        return -1;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (!(v >= 0) || v > 1e12) {
        PyErr_SetString(PyExc_ValueError, "a rate is 0 or more bit/s");
        return -1;
    }
    *field = v;
    return 0;
}

static PyObject *
Pacer_get_rate(Pacer *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->rate);
}

static int
Pacer_set_rate(Pacer *self, PyObject *value, void *Py_UNUSED(c))
{
    return set_rate(&self->rate, value);
}

static PyObject *
Pacer_get_boost(Pacer *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->boost);
}

static int
Pacer_set_boost(Pacer *self, PyObject *value, void *Py_UNUSED(c))
{
    return set_rate(&self->boost, value);
}

static PyObject *
Pacer_get_on_queued(Pacer *self, void *Py_UNUSED(c))
{
    PyObject *v = self->on_queued ? self->on_queued : Py_None;
    Py_INCREF(v);
    return v;
}

static int
Pacer_set_on_queued(Pacer *self, PyObject *value, void *Py_UNUSED(c))
{
    if (value != NULL && value != Py_None && !PyCallable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "on_queued must be callable or None");
        return -1;
    }
    Py_XINCREF(value);
    Py_XSETREF(self->on_queued, value);
    return 0;
}

static PyObject *
Pacer_get_queued(Pacer *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->qn);
}

static PyObject *
Pacer_get_queued_bytes(Pacer *self, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(self->tail - self->head);
}

#define PACER_ULL(name)                                                  \
    static PyObject *Pacer_get_##name(Pacer *self, void *Py_UNUSED(c)) \
    {                                                                    \
        return PyLong_FromUnsignedLongLong(self->name);                 \
    }
PACER_ULL(paced)
PACER_ULL(dropped)
PACER_ULL(sent_bytes)

static PyMethodDef Pacer_methods[] = {
    {"drain", (PyCFunction)Pacer_drain_method, METH_NOARGS,
     "drain() -> int: send what the budget allows now; datagrams still waiting"},
    {"close", (PyCFunction)Pacer_close, METH_NOARGS,
     "close(): send what waits now and stop pacing (idempotent)"},
    {"take_longest_wait", (PyCFunction)Pacer_take_longest_wait, METH_NOARGS,
     "take_longest_wait() -> float: the longest a datagram waited (s) since the last call"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Pacer_getset[] = {
    {"rate", (getter)Pacer_get_rate, (setter)Pacer_set_rate, "bit/s; 0: unpaced", NULL},
    {"boost", (getter)Pacer_get_boost, (setter)Pacer_set_boost,
     "bit/s the rate is raised to while a probe runs; 0: none", NULL},
    {"on_queued", (getter)Pacer_get_on_queued, (setter)Pacer_set_on_queued,
     "called when the queue goes from empty to not", NULL},
    {"queued", (getter)Pacer_get_queued, NULL, "datagrams waiting", NULL},
    {"queued_bytes", (getter)Pacer_get_queued_bytes, NULL, "bytes waiting", NULL},
    {"paced", (getter)Pacer_get_paced, NULL, "datagrams that had to wait", NULL},
    {"dropped", (getter)Pacer_get_dropped, NULL, "datagrams dropped, the queue full", NULL},
    {"sent_bytes", (getter)Pacer_get_sent_bytes, NULL, "bytes sent", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject PacerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.Pacer",
    .tp_doc = "Pacer(): what one subscriber connection sends, at most at `rate` bit/s",
    .tp_basicsize = sizeof(Pacer),
    .tp_dealloc = (destructor)Pacer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pacer_init,
    .tp_methods = Pacer_methods,
    .tp_getset = Pacer_getset,
};
