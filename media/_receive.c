/*
 * media._udpsend.Receiver, InStream and Sink: the SFU's receive path in C.
 *
 * The reference is media/inbound.py (PublisherInbound._on_rtp, ReceptionStats)
 * and media/forwarder.py (UpTrack.on_packet); read them first. One Receiver
 * is one publish connection. Installed (hook) as the datagram_received of
 * the connection's sockets (media/aiortc_compat.py), it takes each SRTP datagram
 * and, with no Python call in between:
 *
 * - unprotects it (SrtpIn, libsrtp by address);
 * - parses the RTP header and scans its extensions for the two it reads
 *   (transport-wide sequence number, audio level) without building objects;
 * - finds the stream by SSRC (an RTX SSRC is unwrapped, RFC 4588: the
 *   original sequence number first, the repaired stream's numbering);
 * - records the arrival for transport-wide feedback, updates the RFC 3550
 *   reception statistics (InStream) and notices gaps for NACKs;
 * - hands it to the stream's Sink (one per published track: VP8 or audio),
 *   which reads what forwarding needs (keyframe, VP8 picture id, level),
 *   keeps video in the shared packet cache and forwards it to every
 *   subscriber's Down (media/_fanout.c), sending at the end of a frame.
 *
 * Everything that is not that common case goes to Python as it arrived
 * (on_rtp with the plaintext: unknown SSRCs, unexpected payload types,
 * malformed packets, RTX padding, tracks the C sink does not read (H264),
 * subscribers on the Python fan-out), so Python's reference path stays the
 * one place for every rule, with the same statistics objects. Python is
 * also called when a gap opens (NackTracker.gap, then on_gap to schedule the
 * NACKs), for a packet filling a gap (NackTracker.filled), for RTCP
 * (on_rtcp) and once per multi-packet frame to arm the flush timer
 * (Sink.on_arm). Nothing here raises for bad input.
 */
#include "_udpsend.h"

#include <math.h>
#include <string.h>
#include <structmember.h>
#include <time.h>

#define MAX_STREAMS 32
#define TWCC_RING 8192

static double
mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* --- InStream: one incoming media SSRC's reception statistics ----------------- */

typedef struct {
    PyObject_HEAD
    unsigned int ssrc;
    double clock_rate;
    uint32_t pts[4];      /* the m-line's media payload types (bitmap) */
    int16_t rtx_apt[128]; /* RTX payload type -> the type it repairs, -1 */
    unsigned long long packets, bytes;
    long base_seq, max_seq, cycles;
    double jitter, transit;
    int have_transit;
    PyObject *nack; /* a NackTracker, or None */
    PyObject *sink; /* a Sink, or None */
    int slow;       /* the stream's packets go to Python (on_rtp) */
} InStream;

static int
instream_set_types(InStream *self, PyObject *pts, PyObject *rtx_apt)
{
    uint32_t bits[4] = {0, 0, 0, 0};
    int16_t apt[128];
    for (int i = 0; i < 128; i++)
        apt[i] = -1;
    PyObject *it = PyObject_GetIter(pts);
    if (it == NULL)
        return -1;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        long pt = PyLong_AsLong(item);
        Py_DECREF(item);
        if (pt == -1 && PyErr_Occurred()) {
            Py_DECREF(it);
            return -1;
        }
        if (pt >= 0 && pt < 128)
            bits[pt >> 5] |= 1u << (pt & 31);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return -1;
    if (!PyDict_Check(rtx_apt)) {
        PyErr_SetString(PyExc_TypeError, "rtx_apt must be a dict");
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(rtx_apt, &pos, &key, &value)) {
        long k = PyLong_AsLong(key), v = PyLong_AsLong(value);
        if (PyErr_Occurred())
            return -1;
        if (k >= 0 && k < 128 && v >= 0 && v < 128)
            apt[k] = (int16_t)v;
    }
    memcpy(self->pts, bits, sizeof bits);
    memcpy(self->rtx_apt, apt, sizeof apt);
    return 0;
}

static int
InStream_init(InStream *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ssrc", "clock_rate", "media_pts", "rtx_apt", "nack", NULL};
    unsigned int ssrc;
    int clock_rate;
    PyObject *pts, *apt, *nack;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "IiOOO", kwlist, &ssrc, &clock_rate, &pts, &apt,
                                     &nack))
        return -1;
    if (clock_rate <= 0) {
        PyErr_SetString(PyExc_ValueError, "clock_rate must be positive");
        return -1;
    }
    if (instream_set_types(self, pts, apt) < 0)
        return -1;
    self->ssrc = ssrc;
    self->clock_rate = clock_rate;
    self->packets = self->bytes = 0;
    self->base_seq = self->max_seq = -1;
    self->cycles = 0;
    self->jitter = self->transit = 0.0;
    self->have_transit = 0;
    Py_INCREF(nack);
    Py_XSETREF(self->nack, nack);
    Py_INCREF(Py_None);
    Py_XSETREF(self->sink, Py_None);
    self->slow = 0;
    return 0;
}

static int
InStream_traverse(InStream *self, visitproc visit, void *arg)
{
    Py_VISIT(self->nack);
    Py_VISIT(self->sink);
    return 0;
}

static int
InStream_clear(InStream *self)
{
    Py_CLEAR(self->nack);
    Py_CLEAR(self->sink);
    return 0;
}

static void
InStream_dealloc(InStream *self)
{
    PyObject_GC_UnTrack(self);
    InStream_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/*
 * Count one packet (ReceptionStats.received): 1 if it opened a gap worth a
 * NACK, 0 if not, -1 with an exception set (from the NackTracker).
 */
static int
instream_received(InStream *self, long seq, uint32_t ts, double now)
{
    self->packets++;
    int first = self->base_seq < 0, newer = 0;
    long highest = self->max_seq;
    if (first) {
        self->base_seq = self->max_seq = seq;
    } else {
        long delta = (seq - self->max_seq) & 0xFFFF;
        if (delta > 0 && delta < 0x8000) {
            if (seq < self->max_seq)
                self->cycles += 1L << 16;
            self->max_seq = seq;
            newer = 1;
        }
    }
    /* Interarrival jitter (RFC 3550 A.8), in timestamp units. */
    double transit = now * self->clock_rate - (double)ts;
    if (self->have_transit) {
        double d = fabs(transit - self->transit);
        if (d < self->clock_rate * 10) /* ignore timestamp jumps (source switch) */
            self->jitter += (d - self->jitter) / 16;
    }
    self->transit = transit;
    self->have_transit = 1;
    if (self->nack == NULL || self->nack == Py_None || first)
        return 0;
    if (newer) {
        if (((seq - highest) & 0xFFFF) == 1)
            return 0;
        PyObject *r = PyObject_CallMethod(self->nack, "gap", "lld", highest, seq, now);
        if (r == NULL)
            return -1;
        int opened = PyObject_IsTrue(r);
        Py_DECREF(r);
        return opened;
    }
    PyObject *r = PyObject_CallMethod(self->nack, "filled", "l", seq);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
InStream_received(InStream *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "received(seq: int, timestamp: int, now: float)");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    unsigned long ts = PyLong_AsUnsignedLongMask(args[1]);
    double now = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred())
        return NULL;
    int r = instream_received(self, seq & 0xFFFF, (uint32_t)ts, now);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *
InStream_set_types(InStream *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_types(media_pts, rtx_apt: dict)");
        return NULL;
    }
    if (instream_set_types(self, args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
InStream_get_jitter(InStream *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->jitter);
}

static PyMemberDef InStream_members[] = {
    {"ssrc", T_UINT, offsetof(InStream, ssrc), READONLY, NULL},
    {"packets", T_ULONGLONG, offsetof(InStream, packets), 0, NULL},
    {"bytes", T_ULONGLONG, offsetof(InStream, bytes), 0, NULL},
    {"base_seq", T_LONG, offsetof(InStream, base_seq), READONLY, NULL},
    {"max_seq", T_LONG, offsetof(InStream, max_seq), READONLY, NULL},
    {"cycles", T_LONG, offsetof(InStream, cycles), READONLY, NULL},
    {"nack", T_OBJECT_EX, offsetof(InStream, nack), READONLY, NULL},
    {"sink", T_OBJECT_EX, offsetof(InStream, sink), 0,
     "the Sink the fast path hands packets to, or None"},
    {"slow", T_INT, offsetof(InStream, slow), 0, "nonzero: every packet goes to on_rtp"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef InStream_getset[] = {
    {"jitter", (getter)InStream_get_jitter, NULL, "interarrival jitter, timestamp units", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef InStream_methods[] = {
    {"received", (PyCFunction)(void (*)(void))InStream_received, METH_FASTCALL,
     "received(seq, timestamp, now) -> bool: count one packet; True if it opened a gap"},
    {"set_types", (PyCFunction)(void (*)(void))InStream_set_types, METH_FASTCALL,
     "set_types(media_pts, rtx_apt): the payload types the fast path accepts"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject InStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.InStream",
    .tp_doc = "InStream(ssrc, clock_rate, media_pts, rtx_apt, nack): one incoming SSRC's "
              "reception statistics (media/inbound.py ReceptionStats)",
    .tp_basicsize = sizeof(InStream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)InStream_init,
    .tp_dealloc = (destructor)InStream_dealloc,
    .tp_traverse = (traverseproc)InStream_traverse,
    .tp_clear = (inquiry)InStream_clear,
    .tp_members = InStream_members,
    .tp_getset = InStream_getset,
    .tp_methods = InStream_methods,
};

/* --- Sink: one published track's packet cache and fan-out ---------------------- */

#define SINK_PYTHON 0
#define SINK_VP8 1
#define SINK_AUDIO 2

typedef struct {
    PyObject_HEAD
    int mode;         /* SINK_VP8, SINK_AUDIO; SINK_PYTHON: the track reads its packets itself */
    int fast;         /* forward here (every subscriber is on the C fan-out) */
    int speech_level; /* an audio level (dBov) at or under it counts as speech */
    PyObject *downs;  /* list of Down */
    PyObject *on_arm; /* on_arm(arm_id): flush the frame in FLUSH_AFTER unless done */
    int armed;
    unsigned long arm_id;
    /* the packet cache: size entries by sequence number (video) */
    Py_ssize_t size;
    PyObject **items;
    long *seqs;
    long keyframe_seq, newest_seq;
    unsigned long long hits, misses, packets_in;
    unsigned long long frames, packets, octets; /* forwarded, since take_counts */
    unsigned long long bytes_in;                /* payload bytes received */
    unsigned long long rtx_bytes_in;            /* ... of them as retransmissions (RTX) */
    unsigned long long keyframes_in;            /* VP8 keyframes begun (their first packet) */
    unsigned long long duplicates;              /* video packets already held: not forwarded */
    int width, height;                          /* of the latest VP8 keyframe, 0 if none */
    unsigned long long level_packets, level_active, level_loudness; /* since take_levels */
} Sink;

static void
sink_drop_cache(Sink *self)
{
    if (self->items != NULL) {
        for (Py_ssize_t i = 0; i < self->size; i++)
            Py_CLEAR(self->items[i]);
    }
    if (self->seqs != NULL) {
        for (Py_ssize_t i = 0; i < self->size; i++)
            self->seqs[i] = -1;
    }
    self->keyframe_seq = self->newest_seq = -1;
}

static int
Sink_init(Sink *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mode", "cache_size", "speech_level", "on_arm", NULL};
    int mode, speech_level;
    Py_ssize_t size;
    PyObject *on_arm;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "inIO", kwlist, &mode, &size, &speech_level,
                                     &on_arm))
        return -1;
    if (mode < SINK_PYTHON || mode > SINK_AUDIO) {
        PyErr_SetString(PyExc_ValueError, "unknown sink mode");
        return -1;
    }
    if (size < 0 || (size & (size - 1)) || size > (1 << 16)) {
        PyErr_SetString(PyExc_ValueError, "cache size must be 0 or a power of two <= 65536");
        return -1;
    }
    if (!PyCallable_Check(on_arm)) {
        PyErr_SetString(PyExc_TypeError, "on_arm must be callable");
        return -1;
    }
    if (self->items != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sink already initialised");
        return -1;
    }
    if (size) {
        self->items = PyMem_Calloc((size_t)size, sizeof(PyObject *));
        self->seqs = PyMem_Calloc((size_t)size, sizeof(long));
        if (self->items == NULL || self->seqs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->size = size;
    sink_drop_cache(self);
    self->mode = mode;
    self->fast = 0;
    self->speech_level = speech_level;
    PyObject *downs = PyList_New(0);
    if (downs == NULL)
        return -1;
    Py_XSETREF(self->downs, downs);
    Py_INCREF(on_arm);
    Py_XSETREF(self->on_arm, on_arm);
    return 0;
}

static int
Sink_traverse(Sink *self, visitproc visit, void *arg)
{
    Py_VISIT(self->downs);
    Py_VISIT(self->on_arm);
    if (self->items != NULL) {
        for (Py_ssize_t i = 0; i < self->size; i++)
            Py_VISIT(self->items[i]);
    }
    return 0;
}

static int
Sink_clear(Sink *self)
{
    Py_CLEAR(self->downs);
    Py_CLEAR(self->on_arm);
    sink_drop_cache(self);
    return 0;
}

static void
Sink_dealloc(Sink *self)
{
    PyObject_GC_UnTrack(self);
    Sink_clear(self);
    PyMem_Free(self->items);
    PyMem_Free(self->seqs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void
sink_put(Sink *self, long seq, PyObject *item, int keyframe)
{
    if (self->size == 0)
        return;
    Py_ssize_t slot = seq & (self->size - 1);
    Py_INCREF(item);
    Py_XSETREF(self->items[slot], item);
    self->seqs[slot] = seq;
    long newest = self->newest_seq;
    if (newest < 0 || (((seq - newest) & 0xFFFF) > 0 && ((seq - newest) & 0xFFFF) < 0x8000))
        self->newest_seq = seq;
    if (keyframe)
        self->keyframe_seq = seq;
}

static void
sink_flush(Sink *self)
{
    self->armed = 0;
    PyObject *downs = self->downs;
    if (downs == NULL || !PyList_Check(downs))
        return;
    Py_INCREF(downs); /* a spill to Python (TURN) may replace the list */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(downs); i++)
        fanout_flush_one(PyList_GET_ITEM(downs, i));
    Py_DECREF(downs);
}

/* One packet of the track (UpTrack.on_packet, for VP8 and audio); 0, or -1 on error. */
static int
sink_packet(Sink *self, PyObject *data, Packet *p)
{
    if (self->size) {
        /* A packet the cache holds already came: a publisher's retransmission of
         * one the SFU never missed, which Chrome sends as bandwidth-probe padding
         * (RTX of its latest packets, up to ~1 Mbit/s on the lowest layer). Its
         * subscribers had it: forwarded again it only fills their links. */
        Py_ssize_t slot = p->seq & (self->size - 1);
        if (self->seqs[slot] == p->seq && self->items[slot] != NULL) {
            self->duplicates++;
            return 0;
        }
    }
    self->packets_in++;
    self->bytes_in += (unsigned long long)(p->end - p->start);
    if (p->rtx)
        self->rtx_bytes_in += (unsigned long long)(p->end - p->start);
    int audio = self->mode == SINK_AUDIO;
    if (audio) {
        p->keyframe = 1;
        p->pid = p->pid_at = p->tl0 = p->tl0_at = -1;
        if (p->level >= 0) {
            int dbov = (int)(p->level & 0x7F);
            self->level_packets++;
            if (dbov <= self->speech_level) {
                self->level_active++;
                self->level_loudness += (unsigned long long)(127 - dbov);
            }
        }
    } else {
        /* A truncated descriptor: forwarded, never a keyframe. */
        vp8_describe(p->data, p->start, p->end, p);
        p->level = -1;
        if (p->keyframe) {
            self->keyframes_in++;
            vp8_keyframe_size(p->data, p->start, p->end, &self->width, &self->height);
        }
        PyObject *entry = packet_tuple(data, p);
        if (entry == NULL)
            return -1;
        sink_put(self, p->seq, entry, p->keyframe);
        Py_DECREF(entry);
    }
    int complete = p->marker || audio;
    PyObject *downs = self->downs;
    long taken = 0;
    if (downs != NULL && PyList_Check(downs) && PyList_GET_SIZE(downs)) {
        uint64_t ntp = ntp_now();
        Py_INCREF(downs); /* a spill to Python (TURN) may replace the list */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(downs); i++) {
            PyObject *down = PyList_GET_ITEM(downs, i);
            int took = fanout_take(down, p, ntp);
            if (took < 0) {
                Py_DECREF(downs);
                return -1;
            }
            taken += took;
            if (complete)
                fanout_flush_one(down);
        }
        Py_DECREF(downs);
    }
    if (complete)
        self->armed = 0;
    if (!taken)
        return 0;
    if (p->marker)
        self->frames += (unsigned long long)taken;
    self->packets += (unsigned long long)taken;
    self->octets += (unsigned long long)taken * (unsigned long long)(p->end - p->start);
    if (!complete && !self->armed) {
        /* The frame's last packet may be lost or late: don't hold the rest. */
        self->armed = 1;
        self->arm_id++;
        PyObject *r = PyObject_CallFunction(self->on_arm, "k", self->arm_id);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static PyObject *
Sink_put(Sink *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "put(seq: int, item, keyframe: bool = False)");
        return NULL;
    }
    long seq = PyLong_AsLong(args[0]);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    int keyframe = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (keyframe < 0)
        return NULL;
    sink_put(self, seq & 0xFFFF, args[1], keyframe);
    Py_RETURN_NONE;
}

static PyObject *
Sink_get(Sink *self, PyObject *arg)
{
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    if (self->size) {
        Py_ssize_t slot = seq & (self->size - 1);
        if (self->seqs[slot] == seq && self->items[slot] != NULL) {
            self->hits++;
            Py_INCREF(self->items[slot]);
            return self->items[slot];
        }
    }
    self->misses++;
    Py_RETURN_NONE;
}

static PyObject *
Sink_holds(Sink *self, PyObject *arg)
{
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    if (self->size) {
        Py_ssize_t slot = seq & (self->size - 1);
        if (self->seqs[slot] == seq && self->items[slot] != NULL)
            Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *
Sink_clear_cache(Sink *self, PyObject *Py_UNUSED(ignored))
{
    sink_drop_cache(self);
    Py_RETURN_NONE;
}

static PyObject *
Sink_flush(Sink *self, PyObject *Py_UNUSED(ignored))
{
    sink_flush(self);
    Py_RETURN_NONE;
}

static PyObject *
Sink_expire(Sink *self, PyObject *arg)
{
    unsigned long arm_id = PyLong_AsUnsignedLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    if (self->armed && self->arm_id == arm_id)
        sink_flush(self);
    Py_RETURN_NONE;
}

static PyObject *
Sink_take_counts(Sink *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(KKK)", self->frames, self->packets, self->octets);
    if (r != NULL)
        self->frames = self->packets = self->octets = 0;
    return r;
}

static PyObject *
Sink_take_levels(Sink *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r =
        Py_BuildValue("(KKK)", self->level_packets, self->level_active, self->level_loudness);
    if (r != NULL)
        self->level_packets = self->level_active = self->level_loudness = 0;
    return r;
}

static PyObject *
seq_or_none(long seq)
{
    if (seq < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(seq);
}

static PyObject *
Sink_get_keyframe_seq(Sink *self, void *Py_UNUSED(c))
{
    return seq_or_none(self->keyframe_seq);
}

static PyObject *
Sink_get_newest_seq(Sink *self, void *Py_UNUSED(c))
{
    return seq_or_none(self->newest_seq);
}

static int
Sink_set_downs(Sink *self, PyObject *value, void *Py_UNUSED(c))
{
    if (value == NULL || !PyList_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "downs must be a list of Down");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++) {
        if (!Py_IS_TYPE(PyList_GET_ITEM(value, i), &DownType)) {
            PyErr_SetString(PyExc_TypeError, "downs must be a list of Down");
            return -1;
        }
    }
    Py_INCREF(value);
    Py_XSETREF(self->downs, value);
    return 0;
}

static PyObject *
Sink_get_downs(Sink *self, void *Py_UNUSED(c))
{
    Py_INCREF(self->downs);
    return self->downs;
}

static PyMemberDef Sink_members[] = {
    {"mode", T_INT, offsetof(Sink, mode), READONLY, NULL},
    {"fast", T_INT, offsetof(Sink, fast), 0,
     "nonzero: the receive path forwards here (else it calls the track)"},
    {"armed", T_INT, offsetof(Sink, armed), READONLY, NULL},
    {"hits", T_ULONGLONG, offsetof(Sink, hits), READONLY, NULL},
    {"misses", T_ULONGLONG, offsetof(Sink, misses), READONLY, NULL},
    {"packets_in", T_ULONGLONG, offsetof(Sink, packets_in), READONLY, NULL},
    {"bytes_in", T_ULONGLONG, offsetof(Sink, bytes_in), READONLY, "payload bytes received"},
    {"rtx_bytes_in", T_ULONGLONG, offsetof(Sink, rtx_bytes_in), READONLY,
     "payload bytes received as retransmissions (RTX: NACK answers, the sender's probes)"},
    {"keyframes_in", T_ULONGLONG, offsetof(Sink, keyframes_in), READONLY,
     "VP8 keyframes received (their first packets)"},
    {"duplicates", T_ULONGLONG, offsetof(Sink, duplicates), READONLY,
     "video packets received again while cached: dropped, not counted in packets_in"},
    {"width", T_INT, offsetof(Sink, width), 0, "the latest VP8 keyframe's width, 0 if none"},
    {"height", T_INT, offsetof(Sink, height), 0, "the latest VP8 keyframe's height, 0 if none"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Sink_getset[] = {
    {"keyframe_seq", (getter)Sink_get_keyframe_seq, NULL, "where the latest keyframe starts",
     NULL},
    {"newest_seq", (getter)Sink_get_newest_seq, NULL, "the newest sequence number cached", NULL},
    {"downs", (getter)Sink_get_downs, (setter)Sink_set_downs, "the Downs it forwards to", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Sink_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Sink_put, METH_FASTCALL,
     "put(seq, item, keyframe=False): cache one packet"},
    {"get", (PyCFunction)Sink_get, METH_O, "get(seq) -> item | None"},
    {"holds", (PyCFunction)Sink_holds, METH_O,
     "holds(seq) -> whether that packet is cached (not counted as a hit or miss)"},
    {"clear", (PyCFunction)Sink_clear_cache, METH_NOARGS, "forget every cached packet"},
    {"flush", (PyCFunction)Sink_flush, METH_NOARGS, "send what the downs queued"},
    {"expire", (PyCFunction)Sink_expire, METH_O,
     "expire(arm_id): the flush timer armed with arm_id is due"},
    {"take_counts", (PyCFunction)Sink_take_counts, METH_NOARGS,
     "take_counts() -> (frames, packets, bytes) forwarded since the last call"},
    {"take_levels", (PyCFunction)Sink_take_levels, METH_NOARGS,
     "take_levels() -> (packets with a level, speech packets, loudness sum) since the last call"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject SinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.Sink",
    .tp_doc = "Sink(mode, cache_size, speech_level, on_arm): one published track's packet "
              "cache and fan-out (media/forwarder.py UpTrack)",
    .tp_basicsize = sizeof(Sink),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sink_init,
    .tp_dealloc = (destructor)Sink_dealloc,
    .tp_traverse = (traverseproc)Sink_traverse,
    .tp_clear = (inquiry)Sink_clear,
    .tp_members = Sink_members,
    .tp_getset = Sink_getset,
    .tp_methods = Sink_methods,
};

/* --- Receiver: one publish connection's datagrams ----------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *srtp;     /* SrtpIn, or None until DTLS keyed the session */
    PyObject *on_rtcp;  /* on_rtcp(srtcp): Python unprotects and reads it */
    PyObject *on_rtp;   /* on_rtp(plain): every packet the fast path does not take */
    PyObject *on_gap;   /* on_gap(): a gap opened, NACKs are due */
    int twcc_id, level_id;
    int nstreams, nrtx;
    unsigned int ssrcs[MAX_STREAMS], rtx_ssrcs[MAX_STREAMS];
    InStream *streams[MAX_STREAMS], *rtx[MAX_STREAMS];
    /* transport-wide arrivals not yet taken */
    int tw_len;
    uint16_t tw_seq[TWCC_RING];
    long long tw_us[TWCC_RING];
    unsigned long long tw_overflow, rtx_packets, padding, srtp_dropped, fast_packets, slow_packets;
} Receiver;

static void
receiver_drop_tables(Receiver *self)
{
    for (int i = 0; i < self->nstreams; i++)
        Py_CLEAR(self->streams[i]);
    for (int i = 0; i < self->nrtx; i++)
        Py_CLEAR(self->rtx[i]);
    self->nstreams = self->nrtx = 0;
}

static int
Receiver_init(Receiver *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"on_rtcp", "on_rtp", "on_gap", NULL};
    PyObject *cb[3];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &cb[0], &cb[1], &cb[2]))
        return -1;
    for (int i = 0; i < 3; i++) {
        if (!PyCallable_Check(cb[i])) {
            PyErr_Format(PyExc_TypeError, "%s must be callable", kwlist[i]);
            return -1;
        }
        Py_INCREF(cb[i]);
    }
    Py_XSETREF(self->on_rtcp, cb[0]);
    Py_XSETREF(self->on_rtp, cb[1]);
    Py_XSETREF(self->on_gap, cb[2]);
    Py_INCREF(Py_None);
    Py_XSETREF(self->srtp, Py_None);
    receiver_drop_tables(self);
    self->twcc_id = self->level_id = -1;
    self->tw_len = 0;
    return 0;
}

static int
Receiver_traverse(Receiver *self, visitproc visit, void *arg)
{
    Py_VISIT(self->srtp);
    Py_VISIT(self->on_rtcp);
    Py_VISIT(self->on_rtp);
    Py_VISIT(self->on_gap);
    for (int i = 0; i < self->nstreams; i++)
        Py_VISIT(self->streams[i]);
    for (int i = 0; i < self->nrtx; i++)
        Py_VISIT(self->rtx[i]);
    return 0;
}

static int
Receiver_clear(Receiver *self)
{
    Py_CLEAR(self->srtp);
    Py_CLEAR(self->on_rtcp);
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->on_gap);
    receiver_drop_tables(self);
    return 0;
}

static void
Receiver_dealloc(Receiver *self)
{
    PyObject_GC_UnTrack(self);
    Receiver_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
call1(PyObject *fn, PyObject *arg)
{
    if (fn == NULL)
        Py_RETURN_NONE; /* closed */
    return PyObject_CallOneArg(fn, arg);
}

/*
 * The extension elements the fast path reads; 0, or -1 if the block is
 * malformed (Python then drops and counts it). Same walk as _rtpparse.c.
 */
static int
scan_extensions(const unsigned char *d, Py_ssize_t pos, Py_ssize_t end, int one_byte, int want_a,
                int want_b, const unsigned char **a, Py_ssize_t *a_len, const unsigned char **b,
                Py_ssize_t *b_len)
{
    while (pos < end) {
        int ext_id;
        Py_ssize_t len;
        if (one_byte) {
            unsigned char byte = d[pos];
            if (byte == 0) {
                pos++;
                continue;
            }
            ext_id = byte >> 4;
            if (ext_id == 15)
                return 0;
            len = (byte & 0x0F) + 1;
            pos++;
        } else {
            ext_id = d[pos];
            if (ext_id == 0) {
                pos++;
                continue;
            }
            if (pos + 2 > end)
                return -1;
            len = d[pos + 1];
            pos += 2;
        }
        if (pos + len > end)
            return -1;
        /* A repeated id: the last one wins, as in the dict the Python path builds. */
        if (ext_id == want_a) {
            *a = d + pos;
            *a_len = len;
        } else if (ext_id == want_b) {
            *b = d + pos;
            *b_len = len;
        }
        pos += len;
    }
    return 0;
}

static int receiver_take(Receiver *self, InStream *stream, PyObject *sink, PyObject *plain, int is_rtx,
                         const unsigned char *d, Py_ssize_t size, Py_ssize_t pos, Py_ssize_t end,
                         long seq, const unsigned char *tw, Py_ssize_t tw_len,
                         const unsigned char *lv, Py_ssize_t lv_len);

/* 1: handled; 0: not the common case, the caller hands it to on_rtp; -1: error. */
static int
receiver_fast(Receiver *self, PyObject *plain)
{
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(plain);
    Py_ssize_t size = PyBytes_GET_SIZE(plain);
    if (size < 12 || d[0] >> 6 != 2)
        return 0;
    Py_ssize_t pos = 12 + 4 * (d[0] & 0x0F);
    if (pos > size)
        return 0;
    const unsigned char *tw = NULL, *lv = NULL;
    Py_ssize_t tw_len = 0, lv_len = 0;
    if (d[0] & 0x10) {
        if (pos + 4 > size)
            return 0;
        unsigned int profile = ((unsigned int)d[pos] << 8) | d[pos + 1];
        Py_ssize_t words = ((Py_ssize_t)d[pos + 2] << 8) | d[pos + 3];
        Py_ssize_t start = pos + 4;
        pos = start + 4 * words;
        if (pos > size)
            return 0;
        if ((profile == 0xBEDE || (profile & 0xFFF0) == 0x1000)
            && scan_extensions(d, start, pos, profile == 0xBEDE, self->twcc_id, self->level_id,
                               &tw, &tw_len, &lv, &lv_len)
                   < 0)
            return 0;
    }
    Py_ssize_t end = size;
    if (d[0] & 0x20) {
        unsigned char padding = d[size - 1];
        if (padding == 0 || pos + padding > size)
            return 0;
        end -= padding;
    }
    unsigned int ssrc = rtp_get32(d + 8);
    int pt = d[1] & 0x7F;
    long seq = (d[2] << 8) | d[3];
    InStream *stream = NULL;
    int is_rtx = 0;
    for (int i = 0; i < self->nstreams; i++) {
        if (self->ssrcs[i] == ssrc) {
            stream = self->streams[i];
            break;
        }
    }
    if (stream == NULL) {
        for (int i = 0; i < self->nrtx; i++) {
            if (self->rtx_ssrcs[i] == ssrc) {
                stream = self->rtx[i];
                is_rtx = 1;
                break;
            }
        }
    }
    if (stream == NULL || stream->slow)
        return 0;
    PyObject *sink = stream->sink;
    if (sink != NULL && sink != Py_None
        && (!Py_IS_TYPE(sink, &SinkType) || !((Sink *)sink)->fast))
        return 0;
    if (is_rtx) {
        /* RFC 4588: the original sequence number, then the original payload. */
        if (end - pos < 2 || stream->rtx_apt[pt] < 0)
            return 0;
        seq = (d[pos] << 8) | d[pos + 1];
        pos += 2;
        self->rtx_packets++;
    } else if (!(stream->pts[pt >> 5] & (1u << (pt & 31)))) {
        return 0;
    }
    self->fast_packets++;
    /* Held: the Python called below (NACK tracker, on_gap, on_arm) may change the tables. */
    Py_INCREF(stream);
    Py_XINCREF(sink);
    int r = receiver_take(self, stream, sink, plain, is_rtx, d, size, pos, end, seq, tw, tw_len, lv,
                          lv_len);
    Py_XDECREF(sink);
    Py_DECREF(stream);
    return r;
}

static int
receiver_take(Receiver *self, InStream *stream, PyObject *sink, PyObject *plain, int is_rtx,
              const unsigned char *d, Py_ssize_t size, Py_ssize_t pos, Py_ssize_t end, long seq,
              const unsigned char *tw, Py_ssize_t tw_len, const unsigned char *lv,
              Py_ssize_t lv_len)
{
    if (tw != NULL && tw_len == 2) {
        /* Every packet counts for the sender's estimate, padding and RTX too. */
        if (self->tw_len < TWCC_RING) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            self->tw_seq[self->tw_len] = (uint16_t)((tw[0] << 8) | tw[1]);
            self->tw_us[self->tw_len] = (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
            self->tw_len++;
        } else {
            self->tw_overflow++;
        }
    }
    uint32_t ts = rtp_get32(d + 4);
    stream->bytes += (unsigned long long)size;
    int gap = instream_received(stream, seq, ts, mono_now());
    if (gap < 0)
        return -1;
    if (gap > 0 && self->on_gap != NULL) {
        PyObject *r = PyObject_CallNoArgs(self->on_gap);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (end == pos) {
        self->padding++;
        return 1;
    }
    if (sink == NULL || sink == Py_None)
        return 1;
    Packet p;
    p.data = d;
    p.size = size;
    p.start = pos;
    p.end = end;
    p.seq = seq;
    p.ts = (long)ts;
    p.marker = (d[1] & 0x80) != 0;
    p.level = (lv != NULL && lv_len >= 1) ? lv[0] : -1;
    p.keyframe = 0;
    p.rtx = is_rtx;
    p.pid = p.pid_at = p.tl0 = p.tl0_at = -1;
    if (sink_packet((Sink *)sink, plain, &p) < 0)
        return -1;
    return 1;
}

static PyObject *
receiver_process(Receiver *self, PyObject *data)
{
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size >= 2 && d[1] >= 192 && d[1] <= 223) /* RTCP (RFC 5761) */
        return call1(self->on_rtcp, data);
    PyObject *plain = srtpin_run((SrtpIn *)self->srtp, data, ((SrtpIn *)self->srtp)->unprotect);
    if (plain == NULL)
        return NULL;
    if (plain == Py_None) {
        self->srtp_dropped++;
        return plain;
    }
    int r = receiver_fast(self, plain);
    PyObject *result = NULL;
    if (r > 0) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else if (r == 0) {
        self->slow_packets++;
        result = call1(self->on_rtp, plain);
    }
    Py_DECREF(plain);
    return result;
}

static int
receiver_keyed(Receiver *self)
{
    return self->srtp != NULL && Py_IS_TYPE(self->srtp, &SrtpInType);
}

/*
 * hook(fallback, data, addr): a socket protocol's datagram_received (bound to
 * the protocol's own fallback with functools.partial). SRTP/SRTCP of the keyed
 * session is ours; anything else (STUN, DTLS, or SRTP before keying) goes to
 * fallback(data, addr).
 */
static PyObject *
Receiver_hook(Receiver *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "hook(fallback, data, addr)");
        return NULL;
    }
    PyObject *data = args[1];
    if (receiver_keyed(self) && PyBytes_Check(data) && PyBytes_GET_SIZE(data) > 0) {
        unsigned char first = (unsigned char)PyBytes_AS_STRING(data)[0];
        if (first > 127 && first < 192)
            return receiver_process(self, data);
    }
    return PyObject_Vectorcall(args[0], args + 1, 2, NULL);
}

/* receive(srtp): one SRTP or SRTCP datagram of the keyed session. */
static PyObject *
Receiver_receive(Receiver *self, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    if (!receiver_keyed(self)) {
        PyErr_SetString(PyExc_RuntimeError, "the receiver has no SRTP session yet");
        return NULL;
    }
    return receiver_process(self, data);
}

/* Fill one table from a list of (ssrc, InStream); 0, or -1. */
static int
receiver_fill(PyObject *list, unsigned int *ssrcs, InStream **streams, int *count)
{
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "expected a list of (ssrc, InStream)");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n && *count < MAX_STREAMS; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2
            || !Py_IS_TYPE(PyTuple_GET_ITEM(item, 1), &InStreamType)) {
            PyErr_SetString(PyExc_TypeError, "expected a list of (ssrc, InStream)");
            return -1;
        }
        unsigned long ssrc = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(item, 0));
        if (PyErr_Occurred())
            return -1;
        PyObject *stream = PyTuple_GET_ITEM(item, 1);
        Py_INCREF(stream);
        ssrcs[*count] = (unsigned int)ssrc;
        streams[*count] = (InStream *)stream;
        (*count)++;
    }
    return 0;
}

static PyObject *
Receiver_set_streams(Receiver *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_streams(streams, rtx): lists of (ssrc, InStream)");
        return NULL;
    }
    receiver_drop_tables(self);
    if (receiver_fill(args[0], self->ssrcs, self->streams, &self->nstreams) < 0
        || receiver_fill(args[1], self->rtx_ssrcs, self->rtx, &self->nrtx) < 0) {
        receiver_drop_tables(self);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Receiver_take_twcc(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(self->tw_len);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < self->tw_len; i++) {
        PyObject *pair = Py_BuildValue("(iL)", (int)self->tw_seq[i], self->tw_us[i]);
        if (pair == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, pair);
    }
    self->tw_len = 0;
    return out;
}

static PyObject *
Receiver_take_dropped(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(KK)", self->srtp_dropped, self->padding);
    if (r != NULL)
        self->srtp_dropped = self->padding = 0;
    return r;
}

static PyObject *
Receiver_close(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    /* The hooks stay: the sockets' STUN and DTLS still go to their fallbacks. */
    Py_CLEAR(self->srtp);
    Py_CLEAR(self->on_rtcp);
    Py_CLEAR(self->on_rtp);
    Py_CLEAR(self->on_gap);
    receiver_drop_tables(self);
    Py_RETURN_NONE;
}

static PyObject *
Receiver_get_srtp(Receiver *self, void *Py_UNUSED(c))
{
    PyObject *srtp = self->srtp ? self->srtp : Py_None;
    Py_INCREF(srtp);
    return srtp;
}

static int
Receiver_set_srtp(Receiver *self, PyObject *value, void *Py_UNUSED(c))
{
    if (value == NULL || (value != Py_None && !Py_IS_TYPE(value, &SrtpInType))) {
        PyErr_SetString(PyExc_TypeError, "srtp must be an SrtpIn or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->srtp, value);
    return 0;
}

static PyMemberDef Receiver_members[] = {
    {"twcc_id", T_INT, offsetof(Receiver, twcc_id), 0,
     "the transport-wide sequence number's extension id, -1 if not negotiated"},
    {"level_id", T_INT, offsetof(Receiver, level_id), 0,
     "the audio level's extension id, -1 if not negotiated"},
    {"rtx_packets", T_ULONGLONG, offsetof(Receiver, rtx_packets), READONLY, NULL},
    {"fast_packets", T_ULONGLONG, offsetof(Receiver, fast_packets), READONLY, NULL},
    {"slow_packets", T_ULONGLONG, offsetof(Receiver, slow_packets), READONLY, NULL},
    {"twcc_overflow", T_ULONGLONG, offsetof(Receiver, tw_overflow), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Receiver_getset[] = {
    {"srtp", (getter)Receiver_get_srtp, (setter)Receiver_set_srtp,
     "the session's SrtpIn once DTLS keyed it", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Receiver_methods[] = {
    {"hook", (PyCFunction)(void (*)(void))Receiver_hook, METH_FASTCALL,
     "hook(fallback, data, addr): a datagram from a socket; what is not ours goes to fallback"},
    {"receive", (PyCFunction)Receiver_receive, METH_O,
     "receive(data): one SRTP/SRTCP datagram of the keyed session"},
    {"set_streams", (PyCFunction)(void (*)(void))Receiver_set_streams, METH_FASTCALL,
     "set_streams(streams, rtx): the media and RTX SSRCs and their InStreams"},
    {"take_twcc", (PyCFunction)Receiver_take_twcc, METH_NOARGS,
     "take_twcc() -> [(transport-wide seq, arrival µs)] since the last call"},
    {"take_dropped", (PyCFunction)Receiver_take_dropped, METH_NOARGS,
     "take_dropped() -> (srtp, padding) datagrams dropped since the last call"},
    {"close", (PyCFunction)Receiver_close, METH_NOARGS,
     "drop the session, the callbacks and the streams (idempotent)"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.Receiver",
    .tp_doc = "Receiver(on_rtcp, on_rtp, on_gap): one publish connection's receive path "
              "(media/inbound.py)",
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_traverse = (traverseproc)Receiver_traverse,
    .tp_clear = (inquiry)Receiver_clear,
    .tp_members = Receiver_members,
    .tp_getset = Receiver_getset,
    .tp_methods = Receiver_methods,
};
