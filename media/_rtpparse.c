/*
 * media._udpsend.RtpPacket, parse_rtp() and vp8_packet(): the receive path's
 * parsing in C.
 *
 * The reference is media/rtpheader.py (PyRtpPacket, py_parse_rtp) and
 * media/payload.py (parse_vp8): same results for every input, tested against
 * each other on fuzzed bytes. parse_rtp never raises for bad input: it
 * returns the reason (a str) instead, which media/rtpheader.py turns into
 * MalformedPacket.
 */
#include "_udpsend.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *data;
    PyObject *extensions; /* dict id -> bytes, or None */
    char marker;
    int payload_type;
    int sequence_number;
    unsigned int timestamp;
    unsigned int ssrc;
    Py_ssize_t payload_start;
    Py_ssize_t payload_end;
} RtpPacket;

static int
RtpPacket_init(RtpPacket *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data",          "marker",       "payload_type",
                             "sequence_number", "timestamp", "ssrc",
                             "payload_start", "payload_end", "extensions",
                             NULL};
    PyObject *data, *extensions;
    int marker, payload_type, seq;
    unsigned int ts, ssrc;
    Py_ssize_t start, end;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OpiiIInnO", kwlist, &data, &marker,
                                     &payload_type, &seq, &ts, &ssrc, &start, &end, &extensions))
        return -1;
    Py_INCREF(data);
    Py_XSETREF(self->data, data);
    Py_INCREF(extensions);
    Py_XSETREF(self->extensions, extensions);
    self->marker = (char)marker;
    self->payload_type = payload_type;
    self->sequence_number = seq;
    self->timestamp = ts;
    self->ssrc = ssrc;
    self->payload_start = start;
    self->payload_end = end;
    return 0;
}

static int
RtpPacket_traverse(RtpPacket *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data);
    Py_VISIT(self->extensions);
    return 0;
}

static int
RtpPacket_clear(RtpPacket *self)
{
    Py_CLEAR(self->data);
    Py_CLEAR(self->extensions);
    return 0;
}

static void
RtpPacket_dealloc(RtpPacket *self)
{
    PyObject_GC_UnTrack(self);
    RtpPacket_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
RtpPacket_get_payload(RtpPacket *self, void *Py_UNUSED(c))
{
    return PySequence_GetSlice(self->data, self->payload_start, self->payload_end);
}

static PyObject *
RtpPacket_get_payload_size(RtpPacket *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->payload_end - self->payload_start);
}

static PyObject *
RtpPacket_extension(RtpPacket *self, PyObject *ext_id)
{
    if (ext_id == Py_None || self->extensions == NULL || !PyDict_Check(self->extensions))
        Py_RETURN_NONE;
    PyObject *value = PyDict_GetItemWithError(self->extensions, ext_id);
    if (value == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(value);
    return value;
}

static PyObject *
RtpPacket_repr(RtpPacket *self)
{
    return PyUnicode_FromFormat("RtpPacket(ssrc=0x%x, pt=%d, seq=%d, ts=%u, m=%d, payload=%zd)",
                                self->ssrc, self->payload_type, self->sequence_number,
                                self->timestamp, (int)self->marker,
                                self->payload_end - self->payload_start);
}

static PyMemberDef RtpPacket_members[] = {
    {"data", T_OBJECT_EX, offsetof(RtpPacket, data), 0, "the whole packet"},
    {"extensions", T_OBJECT_EX, offsetof(RtpPacket, extensions), 0,
     "extension id -> element bytes (one- or two-byte form alike); None if none"},
    {"marker", T_BOOL, offsetof(RtpPacket, marker), 0, NULL},
    {"payload_type", T_INT, offsetof(RtpPacket, payload_type), 0, NULL},
    {"sequence_number", T_INT, offsetof(RtpPacket, sequence_number), 0, NULL},
    {"timestamp", T_UINT, offsetof(RtpPacket, timestamp), 0, NULL},
    {"ssrc", T_UINT, offsetof(RtpPacket, ssrc), 0, NULL},
    {"payload_start", T_PYSSIZET, offsetof(RtpPacket, payload_start), 0, NULL},
    {"payload_end", T_PYSSIZET, offsetof(RtpPacket, payload_end), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef RtpPacket_getset[] = {
    {"payload", (getter)RtpPacket_get_payload, NULL, "data[payload_start:payload_end]", NULL},
    {"payload_size", (getter)RtpPacket_get_payload_size, NULL, "payload bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef RtpPacket_methods[] = {
    {"extension", (PyCFunction)RtpPacket_extension, METH_O,
     "extension(ext_id) -> bytes | None: one element by id"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RtpPacketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.RtpPacket",
    .tp_doc = "One parsed RTP packet; the payload is data[payload_start:payload_end] "
              "(media/rtpheader.py)",
    .tp_basicsize = sizeof(RtpPacket),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RtpPacket_init,
    .tp_dealloc = (destructor)RtpPacket_dealloc,
    .tp_traverse = (traverseproc)RtpPacket_traverse,
    .tp_clear = (inquiry)RtpPacket_clear,
    .tp_repr = (reprfunc)RtpPacket_repr,
    .tp_members = RtpPacket_members,
    .tp_getset = RtpPacket_getset,
    .tp_methods = RtpPacket_methods,
};

/* Add one element; 0 on success. */
static int
add_element(PyObject *dict, int ext_id, const unsigned char *at, Py_ssize_t len)
{
    PyObject *key = PyLong_FromLong(ext_id);
    if (key == NULL)
        return -1;
    PyObject *value = PyBytes_FromStringAndSize((const char *)at, len);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int rc = PyDict_SetItem(dict, key, value);
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

/* The elements of one extension block; NULL with *reason set for a malformed one. */
static PyObject *
parse_extensions(const unsigned char *d, Py_ssize_t pos, Py_ssize_t end, int one_byte,
                 const char **reason)
{
    PyObject *elements = PyDict_New();
    if (elements == NULL)
        return NULL;
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
                break; /* reserved: stop parsing (RFC 8285 4.2) */
            len = (byte & 0x0F) + 1;
            pos++;
        } else {
            ext_id = d[pos];
            if (ext_id == 0) {
                pos++;
                continue;
            }
            if (pos + 2 > end)
                goto overrun;
            len = d[pos + 1];
            pos += 2;
        }
        if (pos + len > end)
            goto overrun;
        if (add_element(elements, ext_id, d + pos, len) < 0) {
            Py_DECREF(elements);
            return NULL;
        }
        pos += len;
    }
    return elements;
overrun:
    Py_DECREF(elements);
    *reason = "header extension element overruns its block";
    return NULL;
}

/* parse_rtp(data: bytes) -> RtpPacket | str: the packet, or why it is malformed. */
PyObject *
rtp_parse(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    const char *reason = NULL;
    if (size < 12)
        return PyUnicode_FromString("shorter than an RTP header");
    unsigned char first = d[0];
    if (first >> 6 != 2)
        return PyUnicode_FromString("not RTP version 2");
    Py_ssize_t pos = 12 + 4 * (first & 0x0F);
    if (pos > size)
        return PyUnicode_FromString("CSRC list overruns the packet");
    PyObject *extensions = NULL;
    if (first & 0x10) {
        if (pos + 4 > size)
            return PyUnicode_FromString("header extension overruns the packet");
        unsigned int profile = ((unsigned int)d[pos] << 8) | d[pos + 1];
        Py_ssize_t words = ((Py_ssize_t)d[pos + 2] << 8) | d[pos + 3];
        Py_ssize_t start = pos + 4;
        pos = start + 4 * words;
        if (pos > size)
            return PyUnicode_FromString("header extension overruns the packet");
        if (profile == 0xBEDE || (profile & 0xFFF0) == 0x1000) {
            extensions = parse_extensions(d, start, pos, profile == 0xBEDE, &reason);
            if (extensions == NULL)
                return reason ? PyUnicode_FromString(reason) : NULL;
        }
    }
    Py_ssize_t end = size;
    if (first & 0x20) {
        unsigned char padding = d[size - 1];
        if (padding == 0 || pos + padding > size) {
            Py_XDECREF(extensions);
            return PyUnicode_FromString("bad padding length");
        }
        end -= padding;
    }
    RtpPacket *packet = PyObject_GC_New(RtpPacket, &RtpPacketType);
    if (packet == NULL) {
        Py_XDECREF(extensions);
        return NULL;
    }
    Py_INCREF(arg);
    packet->data = arg;
    if (extensions == NULL) {
        Py_INCREF(Py_None);
        extensions = Py_None;
    }
    packet->extensions = extensions;
    packet->marker = (char)((d[1] & 0x80) != 0);
    packet->payload_type = d[1] & 0x7F;
    packet->sequence_number = (d[2] << 8) | d[3];
    packet->timestamp = rtp_get32(d + 4);
    packet->ssrc = rtp_get32(d + 8);
    packet->payload_start = pos;
    packet->payload_end = end;
    PyObject_GC_Track(packet);
    return (PyObject *)packet;
}

/* Walk the VP8 payload descriptor of d[start:end] (RFC 7741 4.2): the offset of
 * the VP8 payload header, or -1 if the descriptor is truncated; the picture id,
 * TL0PICIDX and their offsets (from start) through the pointers (-1: absent). */
static Py_ssize_t
vp8_walk(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, long *pid, long *pid_at,
         long *tl0, long *tl0_at)
{
    *pid = *pid_at = *tl0 = *tl0_at = -1;
    if (end - start < 1)
        return -1;
    unsigned char first = d[start];
    Py_ssize_t pos = start + 1;
    if (first & 0x80) {
        if (pos >= end)
            return -1;
        unsigned char ext = d[pos++];
        if (ext & 0x80) {
            if (pos >= end)
                return -1;
            if (d[pos] & 0x80) {
                if (pos + 2 > end)
                    return -1;
                *pid = ((d[pos] & 0x7F) << 8) | d[pos + 1];
                *pid_at = (long)(pos - start);
                pos += 2;
            } else {
                pos++;
            }
        }
        if (ext & 0x40) {
            if (pos >= end)
                return -1;
            *tl0 = d[pos];
            *tl0_at = (long)(pos - start);
            pos++;
        }
        if (ext & 0x30)
            pos++;
    }
    return pos > end ? -1 : pos;
}

/* Whether the packet starts a keyframe: the first packet of a frame (S bit,
 * partition 0) whose frame tag has P = 0. `pos` is the payload header. */
static int
vp8_starts_keyframe(const unsigned char *d, Py_ssize_t start, Py_ssize_t pos, Py_ssize_t end)
{
    unsigned char first = d[start];
    return (first & 0x10) && (first & 0x07) == 0 && pos < end && (d[pos] & 0x01) == 0;
}

int
vp8_describe(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, Packet *p)
{
    /* Nothing is written to p but on success: a truncated descriptor reads as none. */
    long pid, pid_at, tl0, tl0_at;
    Py_ssize_t pos = vp8_walk(d, start, end, &pid, &pid_at, &tl0, &tl0_at);
    p->keyframe = 0;
    p->pid = p->pid_at = p->tl0 = p->tl0_at = -1;
    if (pos < 0)
        return -1;
    p->keyframe = vp8_starts_keyframe(d, start, pos, end);
    p->pid = pid;
    p->pid_at = pid_at;
    p->tl0 = tl0;
    p->tl0_at = tl0_at;
    return 0;
}

int
vp8_keyframe_size(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, int *width,
                  int *height)
{
    long pid, pid_at, tl0, tl0_at;
    Py_ssize_t pos = vp8_walk(d, start, end, &pid, &pid_at, &tl0, &tl0_at);
    /* The VP8 payload header of a keyframe (RFC 6386 9.1): a 3-byte frame tag,
     * the start code 9d 01 2a, then 14-bit width and height (2-bit scale each). */
    if (pos < 0 || !vp8_starts_keyframe(d, start, pos, end) || pos + 10 > end
        || d[pos + 3] != 0x9d || d[pos + 4] != 0x01 || d[pos + 5] != 0x2a)
        return -1;
    *width = (d[pos + 6] | (d[pos + 7] << 8)) & 0x3FFF;
    *height = (d[pos + 8] | (d[pos + 9] << 8)) & 0x3FFF;
    return 0;
}

PyObject *
packet_tuple(PyObject *data, const Packet *p)
{
    PyObject *t = PyTuple_New(12);
    if (t == NULL)
        return NULL;
    Py_INCREF(data);
    PyTuple_SET_ITEM(t, 0, data);
    PyObject *items[11] = {
        PyLong_FromSsize_t(p->start), PyLong_FromSsize_t(p->end), PyLong_FromLong(p->seq),
        PyLong_FromLong(p->ts),       PyBool_FromLong(p->marker), PyBool_FromLong(p->keyframe),
        PyLong_FromLong(p->pid),      PyLong_FromLong(p->pid_at), PyLong_FromLong(p->tl0),
        PyLong_FromLong(p->tl0_at),   PyLong_FromLong(p->level),
    };
    for (int i = 0; i < 11; i++) {
        if (items[i] == NULL) {
            for (int j = i + 1; j < 11; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i + 1, items[i]);
    }
    return t;
}

/*
 * vp8_packet(packet: RtpPacket, level: int) -> tuple | None: the packet tuple of
 * media/downstream.py for a VP8 packet (keyframe, picture id, TL0PICIDX read from
 * its payload descriptor, RFC 7741 4.2), None if the descriptor is truncated.
 * Same reading as media/payload.py's parse_vp8.
 */
PyObject *
rtp_vp8_packet(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !Py_IS_TYPE(args[0], &RtpPacketType)) {
        PyErr_SetString(PyExc_TypeError, "vp8_packet(packet: RtpPacket, level: int)");
        return NULL;
    }
    RtpPacket *p = (RtpPacket *)args[0];
    long level = PyLong_AsLong(args[1]);
    if (level == -1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_Check(p->data)) {
        PyErr_SetString(PyExc_TypeError, "packet data must be bytes");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(p->data);
    Py_ssize_t size = PyBytes_GET_SIZE(p->data);
    Py_ssize_t start = p->payload_start, end = p->payload_end;
    if (start < 0 || end > size)
        Py_RETURN_NONE;
    Packet v;
    if (vp8_describe(d, start, end, &v) < 0)
        Py_RETURN_NONE;
    v.start = start;
    v.end = end;
    v.seq = p->sequence_number;
    v.ts = (long)p->timestamp;
    v.marker = p->marker;
    v.level = level;
    return packet_tuple(p->data, &v);
}
