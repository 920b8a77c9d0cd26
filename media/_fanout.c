/*
 * media._udpsend.Down and forward(): the SFU's per-subscriber hot path in C.
 *
 * The reference is media/downstream.py's PyDown (same algorithm, same bytes,
 * tested against each other); read it first. One Down is one subscriber
 * stream. forward(downs, packet, flush) takes one incoming RTP packet (a
 * tuple describing it, built once by media/forwarder.py) and, for every down
 * of the list, with no Python call in between:
 *
 * - the keyframe gate (video starts at a keyframe after each source change)
 *   and the epoch: sequence number, timestamp, VP8 picture id and TL0PICIDX
 *   offsets chosen at the first packet of a source so the stream continues;
 * - writes this subscriber's header (its SSRC, payload type, rewritten
 *   numbers, its header extensions with abs-send-time, the audio level and
 *   the connection's transport-wide sequence number) and the shared payload
 *   straight into the down's batch buffer (the number and the send time go
 *   into the connection's SendLog, media/_sendlog.c);
 * - protects it there with libsrtp (the UdpOut's session);
 * - queues it in runs of equal-size datagrams and, at the end of a frame
 *   (flush), sends each run with one UDP GSO sendmsg (udpout_send_run).
 *
 * Nothing here raises for a bad packet or a failed send: a packet the down
 * cannot take is counted and skipped, as the network would lose it. The GIL
 * is held throughout (sends are non-blocking).
 */
#include "_udpsend.h"

#include <string.h>
#include <time.h>

#define MAX_EXT 256
#define DOWN_BUFFER (MAX_BATCH_BYTES + 2048)
#define NTP_OFFSET 2208988800ULL

typedef struct {
    PyObject_HEAD
    UdpOut *out;     /* protects and sends; NULL: nowhere to send (not ready) */
    PyObject *spill; /* called with the protected datagrams when out has no socket */
    int ready;       /* the sender runs and is enabled */
    int video;
    uint32_t step; /* nominal frame duration, keeps timestamps rising across a switch */
    /* what every packet of this stream shares (configure) */
    int configured;
    uint32_t ssrc;
    uint8_t payload_type;
    uint8_t first_byte;
    unsigned char ext[MAX_EXT];
    int ext_len, abs_at, level_at, twcc_at;
    SendLog *twcc; /* the connection's transport-wide numbering; NULL: not negotiated */
    Pacer *pacer;  /* the connection's pacer (media/_pacer.c); NULL: sent as flushed */
    /* the epoch: offsets from the current source's numbering */
    int gated, have_epoch, rewrite_vp8;
    uint16_t epoch_seq, seq_offset, next_seq, pid_offset;
    uint8_t tl0_offset;
    uint32_t ts_offset, ts_origin;
    /* the newest packet sent, as sent */
    int have_last, last_pid, last_tl0;
    uint32_t last_ts;
    /* counters */
    unsigned long long packets_sent, octets_sent, send_errors, tx_bytes, tx_packets;
    uint64_t ntp;
    int last_srtp_error;
    /* the batch: protected datagrams back to back, in runs of one size */
    unsigned char *buf;
    size_t off, seg, plain;
    int count, closed;
    /* the transport-wide numbers of the batch's datagrams (-1: none), logged as sent
     * when the batch is */
    long twcc_seqs[MAX_SEGMENTS];
} Down;

uint64_t
ntp_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t frac = ((uint64_t)now.tv_nsec << 32) / 1000000000ULL;
    return (((uint64_t)now.tv_sec + NTP_OFFSET) << 32) | frac;
}

static inline void
put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void down_flush(Down *self);

/* Whether a packet of `n` plaintext bytes of this stream gets a transport-wide number. */
static inline int
down_numbers(Down *self, size_t n)
{
    return self->twcc != NULL && self->twcc->ring != NULL && self->twcc_at >= 0
           && n >= 12 + (size_t)self->twcc_at + 2;
}

/* Before numbering a packet: another stream's batch with numbered packets leaves
 * first (numbers must leave in order, or the subscriber's feedback reports the
 * later ones' arrivals first and the earlier ones as lost). */
static inline void
down_claim(Down *self)
{
    SendLog *log = self->twcc;
    PyObject *other = log->pending;
    if (other != NULL && other != (PyObject *)self) {
        log->pending = NULL;
        down_flush((Down *)other);
    }
    log->pending = (PyObject *)self;
}

/* Number the plaintext packet at `dst` (its extension block as this stream lays
 * it out) with the connection's next transport-wide sequence number. */
static inline long
down_stamp(Down *self, unsigned char *dst)
{
    uint16_t seq = self->twcc->next++;
    put16(dst + 12 + self->twcc_at, seq);
    return seq;
}

/* Log the batch's numbered datagrams as sent now (when it is sent or spilled). */
static void
down_log_batch(Down *self)
{
    if (self->twcc == NULL)
        return;
    int64_t now = monotonic_us();
    size_t start = 0;
    for (int i = 0; i < self->count; i++) {
        size_t len = self->off - start < self->seg ? self->off - start : self->seg;
        if (self->twcc_seqs[i] >= 0)
            sendlog_record(self->twcc, (uint16_t)self->twcc_seqs[i], len, now);
        start += len;
    }
}

/* The packet tuple: (data, start, end, seq, ts, marker, keyframe, pid, pid_at, tl0, tl0_at,
 * level); -1 for an absent picture id, TL0PICIDX or level. 0 on success. */
static int
parse_packet(PyObject *tuple, Packet *p)
{
    p->rtx = 0;
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != 12) {
        PyErr_SetString(PyExc_TypeError, "packet must be a 12-tuple");
        return -1;
    }
    PyObject *data = PyTuple_GET_ITEM(tuple, 0);
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "packet data must be bytes");
        return -1;
    }
    p->data = (const unsigned char *)PyBytes_AS_STRING(data);
    p->size = PyBytes_GET_SIZE(data);
    long v[11];
    for (int i = 0; i < 11; i++) {
        v[i] = PyLong_AsLong(PyTuple_GET_ITEM(tuple, i + 1));
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    p->start = v[0];
    p->end = v[1];
    p->seq = v[2] & 0xFFFF;
    p->ts = v[3] & 0xFFFFFFFFL;
    p->marker = v[4] != 0;
    p->keyframe = v[5] != 0;
    p->pid = v[6];
    p->pid_at = v[7];
    p->tl0 = v[8];
    p->tl0_at = v[9];
    p->level = v[10];
    if (p->start < 0 || p->end < p->start || p->end > p->size) {
        PyErr_SetString(PyExc_ValueError, "payload bounds outside the packet");
        return -1;
    }
    Py_ssize_t len = p->end - p->start;
    if (p->pid >= 0 && (p->pid_at < 0 || p->pid_at + 2 > len))
        p->pid = -1; /* a position we would not write inside the payload: leave it */
    if (p->tl0 >= 0 && (p->tl0_at < 0 || p->tl0_at + 1 > len))
        p->tl0 = -1;
    return 0;
}

/* --- the batch ------------------------------------------------------------- */

static void
down_reset_batch(Down *self)
{
    self->off = self->seg = self->plain = 0;
    self->count = self->closed = 0;
}

/* Hand the protected datagrams of a spilled batch to Python (TURN pairs). */
static void
down_spill(Down *self)
{
    PyObject *list = PyList_New(self->count);
    if (list == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
        return;
    }
    size_t start = 0;
    for (int i = 0; i < self->count; i++) {
        size_t len = self->off - start < self->seg ? self->off - start : self->seg;
        PyObject *item = PyBytes_FromStringAndSize((const char *)self->buf + start, len);
        if (item == NULL) {
            Py_DECREF(list);
            PyErr_WriteUnraisable((PyObject *)self);
            return;
        }
        PyList_SET_ITEM(list, i, item);
        start += len;
    }
    PyObject *r = PyObject_CallOneArg(self->spill, list);
    Py_DECREF(list);
    if (r == NULL) {
        self->send_errors++;
        PyErr_WriteUnraisable(self->spill);
    } else {
        Py_DECREF(r);
        self->tx_bytes += self->off;
        self->tx_packets += (unsigned long long)self->count;
    }
}

static void
down_flush(Down *self)
{
    if (self->twcc != NULL && self->twcc->pending == (PyObject *)self)
        self->twcc->pending = NULL;
    if (!self->count)
        return;
    UdpOut *out = self->out;
    if (out != NULL && out->fd >= 0 && pacer_active(self->pacer)) {
        /* The pacer logs the numbers as the datagrams leave. */
        Py_ssize_t taken = pacer_submit(self->pacer, out, self->twcc, self->buf, self->off,
                                        self->seg, self->count, self->twcc_seqs);
        self->tx_bytes += (unsigned long long)taken;
        self->tx_packets += (unsigned long long)self->count;
        down_reset_batch(self);
        return;
    }
    down_log_batch(self);
    if (out != NULL && out->fd >= 0) {
        Py_ssize_t sent = udpout_send_run(out, self->buf, self->off, self->seg, self->count);
        self->tx_bytes += (unsigned long long)sent;
        self->tx_packets += (unsigned long long)self->count;
    } else if (self->spill != NULL && self->spill != Py_None) {
        down_spill(self);
    } else {
        self->send_errors += (unsigned long long)self->count;
    }
    down_reset_batch(self);
}

/* Room in the batch for a datagram of `n` plaintext bytes: send the batch
 * first when the packet cannot join its run. 0 on success, -1 if too big. */
static int
down_make_room(Down *self, size_t n)
{
    if (n + MAX_TRAILER > MAX_BATCH_BYTES)
        return -1;
    if (self->count
        && (self->closed || n > self->plain || self->count >= MAX_SEGMENTS
            || self->off + n + MAX_TRAILER > MAX_BATCH_BYTES))
        down_flush(self);
    if (self->buf == NULL) {
        self->buf = PyMem_Malloc(DOWN_BUFFER);
        if (self->buf == NULL)
            return -1;
    }
    return 0;
}

/* Protect the `n` plaintext bytes written at the batch's end and keep them
 * (`twcc`: their transport-wide number, -1 if none). */
static int
down_commit(Down *self, size_t n, long twcc)
{
    int len = (int)n;
    int rc = self->out->protect(self->out->ctx, self->buf + self->off, &len);
    if (rc != 0 || len < (int)n || (size_t)len > n + MAX_TRAILER) {
        self->send_errors++;
        self->last_srtp_error = rc ? rc : -1;
        return -1;
    }
    if (self->count == 0) {
        self->plain = n;
        self->seg = (size_t)len;
    } else if (n < self->plain) {
        self->closed = 1;
    }
    self->off += (size_t)len;
    self->twcc_seqs[self->count] = twcc;
    self->count++;
    return 0;
}

/* --- rewriting --------------------------------------------------------------- */

static void
down_start_epoch(Down *self, const Packet *p)
{
    self->have_epoch = 1;
    self->epoch_seq = (uint16_t)p->seq;
    self->seq_offset = (uint16_t)(self->next_seq - p->seq);
    uint32_t start = self->have_last ? self->last_ts + self->step : self->ts_origin;
    self->ts_offset = (uint32_t)(start - (uint32_t)p->ts);
    self->pid_offset = 0;
    self->tl0_offset = 0;
    if (p->pid >= 0 && self->have_last && self->last_pid >= 0)
        self->pid_offset = (uint16_t)((self->last_pid + 1 - p->pid) & 0x7FFF);
    if (p->tl0 >= 0 && self->have_last && self->last_tl0 >= 0)
        self->tl0_offset = (uint8_t)((self->last_tl0 + 1 - p->tl0) & 0xFF);
    self->rewrite_vp8 = self->pid_offset || self->tl0_offset;
}

/* Write this stream's plaintext of `p` numbered `out_seq` at `dst`; returns its size. */
static size_t
down_write(Down *self, const Packet *p, uint16_t out_seq, uint64_t ntp, unsigned char *dst)
{
    dst[0] = self->first_byte;
    dst[1] = (unsigned char)((p->marker ? 0x80 : 0) | self->payload_type);
    put16(dst + 2, out_seq);
    put32(dst + 4, (uint32_t)p->ts + self->ts_offset);
    put32(dst + 8, self->ssrc);
    unsigned char *q = dst + 12;
    if (self->ext_len) {
        memcpy(q, self->ext, (size_t)self->ext_len);
        if (self->abs_at >= 0) {
            uint32_t abs = (uint32_t)(ntp >> 14) & 0xFFFFFF;
            q[self->abs_at] = (unsigned char)(abs >> 16);
            q[self->abs_at + 1] = (unsigned char)(abs >> 8);
            q[self->abs_at + 2] = (unsigned char)abs;
        }
        if (self->level_at >= 0)
            q[self->level_at] = (unsigned char)(p->level >= 0 ? p->level : 0x7F);
        q += self->ext_len;
    }
    size_t len = (size_t)(p->end - p->start);
    memcpy(q, p->data + p->start, len);
    if (self->rewrite_vp8) {
        if (p->pid >= 0) {
            uint32_t pid = (uint32_t)(p->pid + self->pid_offset) & 0x7FFF;
            q[p->pid_at] = (unsigned char)(0x80 | (pid >> 8));
            q[p->pid_at + 1] = (unsigned char)pid;
        }
        if (p->tl0 >= 0)
            q[p->tl0_at] = (unsigned char)((p->tl0 + self->tl0_offset) & 0xFF);
    }
    return 12 + (size_t)self->ext_len + len;
}

/* The gate, the rewrite and the batch for one packet; 1 if taken. */
static int
down_take(Down *self, const Packet *p, uint64_t ntp)
{
    if (!self->ready || self->out == NULL || !self->configured) {
        if (self->video) {
            self->gated = 1;
            self->have_epoch = 0;
        }
        return 0;
    }
    if (self->gated) {
        if (!p->keyframe)
            return 0;
        self->gated = 0;
        down_start_epoch(self, p);
    } else if (!self->have_epoch) {
        down_start_epoch(self, p);
    } else if (p->seq != self->epoch_seq && ((p->seq - self->epoch_seq) & 0xFFFF) >= 0x8000) {
        return 0; /* from before this source's first forwarded packet */
    }
    uint16_t out_seq = (uint16_t)(p->seq + self->seq_offset);
    size_t n = 12 + (size_t)self->ext_len + (size_t)(p->end - p->start);
    int numbered = down_numbers(self, n) && (self->first_byte & 0x10);
    if (down_make_room(self, n) < 0) {
        self->send_errors++;
        return 0;
    }
    if (numbered)
        down_claim(self);
    unsigned char *dst = self->buf + self->off;
    down_write(self, p, out_seq, ntp, dst);
    long twcc = numbered ? down_stamp(self, dst) : -1;
    /* A packet libsrtp refuses (counted in send_errors) is taken and lost, as on
     * the network: its number is spent, the subscriber's NACK may recover it. */
    down_commit(self, n, twcc);
    if (((uint16_t)(out_seq - self->next_seq)) < 0x8000) {
        self->next_seq = (uint16_t)(out_seq + 1);
        self->have_last = 1;
        self->last_ts = (uint32_t)p->ts + self->ts_offset;
        self->last_pid = p->pid >= 0 ? (int)((p->pid + self->pid_offset) & 0x7FFF) : -1;
        self->last_tl0 = p->tl0 >= 0 ? (int)((p->tl0 + self->tl0_offset) & 0xFF) : -1;
    }
    self->packets_sent++;
    self->octets_sent += (unsigned long long)(p->end - p->start);
    self->ntp = ntp;
    return 1;
}

/* --- module functions ------------------------------------------------------ */

PyObject *
fanout_forward(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "forward(downs: list, packet: tuple, flush: bool)");
        return NULL;
    }
    Packet p;
    if (parse_packet(args[1], &p) < 0)
        return NULL;
    int flush = PyObject_IsTrue(args[2]);
    if (flush < 0)
        return NULL;
    PyObject *downs = args[0];
    uint64_t ntp = ntp_now();
    long taken = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(downs); i++) {
        PyObject *item = PyList_GET_ITEM(downs, i);
        if (!Py_IS_TYPE(item, &DownType)) {
            PyErr_SetString(PyExc_TypeError, "downs must be a list of Down");
            return NULL;
        }
        Down *down = (Down *)item;
        taken += down_take(down, &p, ntp);
        if (flush)
            down_flush(down);
    }
    return PyLong_FromLong(taken);
}

int
fanout_take(PyObject *down, const Packet *p, uint64_t ntp)
{
    if (!Py_IS_TYPE(down, &DownType)) {
        PyErr_SetString(PyExc_TypeError, "downs must be a list of Down");
        return -1;
    }
    return down_take((Down *)down, p, ntp) ? 1 : 0;
}

void
fanout_flush_one(PyObject *down)
{
    if (Py_IS_TYPE(down, &DownType))
        down_flush((Down *)down);
}

PyObject *
fanout_flush(PyObject *Py_UNUSED(module), PyObject *downs)
{
    if (!PyList_Check(downs)) {
        PyErr_SetString(PyExc_TypeError, "downs must be a list of Down");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(downs); i++) {
        PyObject *item = PyList_GET_ITEM(downs, i);
        if (!Py_IS_TYPE(item, &DownType)) {
            PyErr_SetString(PyExc_TypeError, "downs must be a list of Down");
            return NULL;
        }
        down_flush((Down *)item);
    }
    Py_RETURN_NONE;
}

/* --- the Down type ----------------------------------------------------------- */

static int
Down_init(Down *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"video", "step", NULL};
    int video;
    unsigned int step;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "pI", kwlist, &video, &step))
        return -1;
    self->video = video;
    self->step = step;
    self->gated = video;
    self->have_epoch = self->have_last = 0;
    self->last_pid = self->last_tl0 = -1;
    self->ext_len = 0;
    self->abs_at = self->level_at = self->twcc_at = -1;
    self->first_byte = 0x80;
    down_reset_batch(self);
    return 0;
}

static int
Down_traverse(Down *self, visitproc visit, void *arg)
{
    Py_VISIT(self->out);
    Py_VISIT(self->spill);
    Py_VISIT(self->twcc);
    Py_VISIT(self->pacer);
    return 0;
}

static int
Down_clear(Down *self)
{
    Py_CLEAR(self->out);
    Py_CLEAR(self->spill);
    if (self->twcc != NULL && self->twcc->pending == (PyObject *)self)
        self->twcc->pending = NULL;
    Py_CLEAR(self->twcc);
    Py_CLEAR(self->pacer);
    return 0;
}

static void
Down_dealloc(Down *self)
{
    PyObject_GC_UnTrack(self);
    Down_clear(self);
    PyMem_Free(self->buf);
    self->buf = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Down_configure(Down *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ssrc", "payload_type", "first_byte", "ext", "abs_at", "level_at",
                             "sequence_number", "timestamp_origin", "twcc_at", NULL};
    unsigned int ssrc, payload_type, first_byte, seq, ts;
    int abs_at, level_at, twcc_at = -1;
    Py_buffer ext;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IIIy*iiII|i", kwlist, &ssrc, &payload_type,
                                     &first_byte, &ext, &abs_at, &level_at, &seq, &ts, &twcc_at))
        return NULL;
    if (ext.len > MAX_EXT || ext.len % 4 || payload_type > 127 || first_byte > 255
        || abs_at < -1 || level_at < -1 || (abs_at >= 0 && (abs_at < 4 || abs_at + 3 > ext.len))
        || (level_at >= 0 && (level_at < 4 || level_at + 1 > ext.len)) || twcc_at < -1
        || (twcc_at >= 0 && (twcc_at < 4 || twcc_at + 2 > ext.len))) {
        PyBuffer_Release(&ext);
        PyErr_SetString(PyExc_ValueError, "bad stream layout");
        return NULL;
    }
    memcpy(self->ext, ext.buf, (size_t)ext.len);
    self->ext_len = (int)ext.len;
    PyBuffer_Release(&ext);
    self->ssrc = ssrc;
    self->payload_type = (uint8_t)payload_type;
    self->first_byte = (uint8_t)first_byte;
    self->abs_at = abs_at;
    self->level_at = level_at;
    self->twcc_at = twcc_at;
    self->next_seq = (uint16_t)seq;
    self->ts_origin = ts;
    self->configured = 1;
    Py_RETURN_NONE;
}

static PyObject *
Down_switch(Down *self, PyObject *Py_UNUSED(ignored))
{
    down_flush(self);
    self->gated = self->video;
    self->have_epoch = 0;
    Py_RETURN_NONE;
}

static PyObject *
Down_flush_method(Down *self, PyObject *Py_UNUSED(ignored))
{
    down_flush(self);
    Py_RETURN_NONE;
}

/* build(packet, out_seq) -> bytes | None: the plaintext this stream sent (or would send) as
 * out_seq, for a retransmission; None before the stream is configured. */
static PyObject *
Down_build(Down *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "build(packet: tuple, out_seq: int)");
        return NULL;
    }
    Packet p;
    if (parse_packet(args[0], &p) < 0)
        return NULL;
    long out_seq = PyLong_AsLong(args[1]);
    if (out_seq == -1 && PyErr_Occurred())
        return NULL;
    if (!self->configured)
        Py_RETURN_NONE;
    size_t n = 12 + (size_t)self->ext_len + (size_t)(p.end - p.start);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (out == NULL)
        return NULL;
    self->ntp = ntp_now();
    down_write(self, &p, (uint16_t)out_seq, self->ntp,
               (unsigned char *)PyBytes_AS_STRING(out));
    return out;
}

/* send(packets: list[bytes]) -> int: protect and send these plaintext packets now (after
 * what is queued); returns how many were taken. */
static PyObject *
Down_send(Down *self, PyObject *packets)
{
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
        return NULL;
    }
    if (self->out == NULL)
        return PyLong_FromLong(0);
    long taken = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(packets); i++) {
        PyObject *item = PyList_GET_ITEM(packets, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
            return NULL;
        }
        size_t n = (size_t)PyBytes_GET_SIZE(item);
        if (n < 12 || down_make_room(self, n) < 0) {
            self->send_errors++;
            continue;
        }
        const unsigned char *src = (const unsigned char *)PyBytes_AS_STRING(item);
        int numbered = down_numbers(self, n) && (src[0] & 0x10);
        if (numbered)
            down_claim(self); /* after make_room: it may have sent this batch */
        unsigned char *dst = self->buf + self->off;
        memcpy(dst, src, n);
        long twcc = numbered ? down_stamp(self, dst) : -1;
        if (down_commit(self, n, twcc) == 0)
            taken++;
    }
    down_flush(self);
    return PyLong_FromLong(taken);
}

/* take_tx() -> (bytes, packets) protected and handed out since the last call. */
static PyObject *
Down_take_tx(Down *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(KK)", self->tx_bytes, self->tx_packets);
    self->tx_bytes = self->tx_packets = 0;
    return r;
}

static PyObject *
Down_get_out(Down *self, void *Py_UNUSED(c))
{
    PyObject *out = self->out ? (PyObject *)self->out : Py_None;
    Py_INCREF(out);
    return out;
}

static int
Down_set_out(Down *self, PyObject *value, void *Py_UNUSED(c))
{
    if (value != NULL && value != Py_None && !Py_IS_TYPE(value, &UdpOutType)) {
        PyErr_SetString(PyExc_TypeError, "out must be a UdpOut or None");
        return -1;
    }
    down_flush(self); /* what was protected with the old session leaves by the old route */
    UdpOut *out = (value == NULL || value == Py_None) ? NULL : (UdpOut *)value;
    Py_XINCREF(out);
    Py_XSETREF(self->out, out);
    return 0;
}

static PyObject *
Down_get_spill(Down *self, void *Py_UNUSED(c))
{
    PyObject *spill = self->spill ? self->spill : Py_None;
    Py_INCREF(spill);
    return spill;
}

static int
Down_set_spill(Down *self, PyObject *value, void *Py_UNUSED(c))
{
    PyObject *spill = (value == NULL || value == Py_None) ? NULL : value;
    if (spill != NULL && !PyCallable_Check(spill)) {
        PyErr_SetString(PyExc_TypeError, "spill must be callable or None");
        return -1;
    }
    Py_XINCREF(spill);
    Py_XSETREF(self->spill, spill);
    return 0;
}

static PyObject *
Down_get_twcc(Down *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->twcc ? (PyObject *)self->twcc : Py_None);
}

static int
Down_set_twcc(Down *self, PyObject *value, void *Py_UNUSED(c))
{
    if (self->twcc != NULL && self->twcc->pending == (PyObject *)self)
        self->twcc->pending = NULL;
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->twcc);
        return 0;
    }
    if (!Py_IS_TYPE(value, &SendLogType)) {
        PyErr_SetString(PyExc_TypeError, "twcc must be a SendLog or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->twcc, (SendLog *)value);
    return 0;
}

static PyObject *
Down_get_pacer(Down *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->pacer ? (PyObject *)self->pacer : Py_None);
}

static int
Down_set_pacer(Down *self, PyObject *value, void *Py_UNUSED(c))
{
    if (value == NULL || value == Py_None) {
        down_flush(self);
        Py_CLEAR(self->pacer);
        return 0;
    }
    if (!Py_IS_TYPE(value, &PacerType)) {
        PyErr_SetString(PyExc_TypeError, "pacer must be a Pacer or None");
        return -1;
    }
    down_flush(self);
    Py_INCREF(value);
    Py_XSETREF(self->pacer, (Pacer *)value);
    return 0;
}

static PyObject *
Down_get_ready(Down *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->ready);
}

static int
Down_set_ready(Down *self, PyObject *value, void *Py_UNUSED(c))
{
    int ready = value ? PyObject_IsTrue(value) : 0;
    if (ready < 0)
        return -1;
    if (!ready && self->video) {
        self->gated = 1;
        self->have_epoch = 0;
    }
    self->ready = ready;
    return 0;
}

static PyObject *
Down_get_epoch(Down *self, void *Py_UNUSED(c))
{
    if (!self->have_epoch)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->epoch_seq);
}

static PyObject *
Down_get_rtp_timestamp(Down *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLong(self->have_last ? self->last_ts : self->ts_origin);
}

#define DOWN_INT_GETTER(name, conv)                                    \
    static PyObject *Down_get_##name(Down *self, void *Py_UNUSED(c)) \
    {                                                                  \
        return conv(self->name);                                       \
    }
DOWN_INT_GETTER(gated, PyBool_FromLong)
DOWN_INT_GETTER(packets_sent, PyLong_FromUnsignedLongLong)
DOWN_INT_GETTER(octets_sent, PyLong_FromUnsignedLongLong)
DOWN_INT_GETTER(send_errors, PyLong_FromUnsignedLongLong)
DOWN_INT_GETTER(ntp, PyLong_FromUnsignedLongLong)
DOWN_INT_GETTER(last_srtp_error, PyLong_FromLong)
DOWN_INT_GETTER(seq_offset, PyLong_FromLong)
DOWN_INT_GETTER(next_seq, PyLong_FromLong)
DOWN_INT_GETTER(ssrc, PyLong_FromUnsignedLong)
DOWN_INT_GETTER(count, PyLong_FromLong)

static PyMethodDef Down_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))Down_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(ssrc, payload_type, first_byte, ext, abs_at, level_at, sequence_number, "
     "timestamp_origin, twcc_at=-1): what every packet of the stream shares"},
    {"switch", (PyCFunction)Down_switch, METH_NOARGS,
     "the source changes or goes: send what is queued, then start at its next keyframe"},
    {"flush", (PyCFunction)Down_flush_method, METH_NOARGS, "send what is queued"},
    {"build", (PyCFunction)(void (*)(void))Down_build, METH_FASTCALL,
     "build(packet, out_seq) -> bytes | None: this stream's plaintext of a packet"},
    {"send", (PyCFunction)Down_send, METH_O,
     "send(packets) -> int: protect and send plaintext packets now"},
    {"take_tx", (PyCFunction)Down_take_tx, METH_NOARGS,
     "take_tx() -> (bytes, packets) handed out since the last call"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Down_getset[] = {
    {"out", (getter)Down_get_out, (setter)Down_set_out, "the UdpOut (None: no route)", NULL},
    {"spill", (getter)Down_get_spill, (setter)Down_set_spill,
     "called with protected datagrams when out has no socket", NULL},
    {"pacer", (getter)Down_get_pacer, (setter)Down_set_pacer,
     "the connection's Pacer (None: each flush sent at once)", NULL},
    {"ready", (getter)Down_get_ready, (setter)Down_set_ready, "the sender runs, enabled", NULL},
    {"twcc", (getter)Down_get_twcc, (setter)Down_set_twcc,
     "the connection's SendLog (None: no transport-wide numbering)", NULL},
    {"epoch", (getter)Down_get_epoch, NULL, "first source sequence number of the epoch", NULL},
    {"rtp_timestamp", (getter)Down_get_rtp_timestamp, NULL, "of the newest packet sent", NULL},
    {"gated", (getter)Down_get_gated, NULL, "waiting for a keyframe", NULL},
    {"packets_sent", (getter)Down_get_packets_sent, NULL, "packets forwarded", NULL},
    {"octets_sent", (getter)Down_get_octets_sent, NULL, "payload octets forwarded", NULL},
    {"send_errors", (getter)Down_get_send_errors, NULL, "packets lost to errors", NULL},
    {"ntp", (getter)Down_get_ntp, NULL, "NTP time of the newest packet", NULL},
    {"last_srtp_error", (getter)Down_get_last_srtp_error, NULL, "libsrtp status", NULL},
    {"seq_offset", (getter)Down_get_seq_offset, NULL, "out = source + offset", NULL},
    {"sequence_number", (getter)Down_get_next_seq, NULL, "the next one to send", NULL},
    {"ssrc", (getter)Down_get_ssrc, NULL, "the stream's SSRC", NULL},
    {"queued", (getter)Down_get_count, NULL, "datagrams waiting for a flush", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DownType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.Down",
    .tp_doc = "Down(video, step): one subscriber stream's rewrite and batch (media/downstream.py)",
    .tp_basicsize = sizeof(Down),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Down_init,
    .tp_dealloc = (destructor)Down_dealloc,
    .tp_traverse = (traverseproc)Down_traverse,
    .tp_clear = (inquiry)Down_clear,
    .tp_methods = Down_methods,
    .tp_getset = Down_getset,
};
