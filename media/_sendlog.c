/*
 * media._udpsend.SendLog: what one subscriber connection sent, by
 * transport-wide sequence number (the send half of transport-cc).
 *
 * Every packet the SFU sends on a connection that negotiated the
 * transport-wide sequence number extension gets the connection's next number
 * (stamped by the Down, media/_fanout.c) and an entry here: when it left
 * (CLOCK_MONOTONIC, microseconds: the clock of Python's time.monotonic) and
 * its size on the wire. The subscriber's feedback says which numbers arrived
 * when (counted with its IP and UDP headers, TRANSPORT_OVERHEAD);
 * media/transportcc.py looks the send side up here (lookup) to feed the
 * estimator. The log is a ring: numbers older than SENDLOG_SIZE packets are
 * forgotten (lookup gives None for them). media/sendlog.py is the Python twin.
 */
#include "_udpsend.h"

#include <time.h>

int64_t
monotonic_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

void
sendlog_record(SendLog *log, uint16_t seq, size_t size, int64_t at_us)
{
    size += TRANSPORT_OVERHEAD;
    SentPacket *entry = &log->ring[seq & (SENDLOG_SIZE - 1)];
    entry->at_us = at_us;
    entry->size = (uint32_t)size;
    entry->seq = seq;
    entry->used = 1;
    if (log->last_logged >= 0 && seq != (uint16_t)(log->last_logged + 1))
        log->disorder++;
    log->last_logged = seq;
    log->packets++;
    log->bytes += size;
}

static int
SendLog_init(SendLog *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"first", NULL};
    unsigned int first = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|I", kwlist, &first))
        return -1;
    if (self->ring == NULL) {
        self->ring = PyMem_Calloc(SENDLOG_SIZE, sizeof(SentPacket));
        if (self->ring == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    } else {
        memset(self->ring, 0, SENDLOG_SIZE * sizeof(SentPacket));
    }
    self->next = (uint16_t)first;
    self->packets = self->bytes = self->disorder = 0;
    self->last_logged = -1;
    return 0;
}

static void
SendLog_dealloc(SendLog *self)
{
    PyMem_Free(self->ring);
    self->ring = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* take(size) -> int: the next number, recorded as sent now with `size` bytes. */
static PyObject *
SendLog_take(SendLog *self, PyObject *arg)
{
    long size = PyLong_AsLong(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0 || self->ring == NULL) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0 (and the log initialised)");
        return NULL;
    }
    uint16_t seq = self->next++;
    sendlog_record(self, seq, (size_t)size, monotonic_us());
    return PyLong_FromLong(seq);
}

/* lookup(base, count) -> list[tuple[int, int] | None]: (sent at µs, size) of
 * numbers base .. base + count - 1 (mod 2^16), None where not in the log. */
static PyObject *
SendLog_lookup(SendLog *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lookup(base: int, count: int)");
        return NULL;
    }
    long base = PyLong_AsLong(args[0]);
    if (base == -1 && PyErr_Occurred())
        return NULL;
    long count = PyLong_AsLong(args[1]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (count < 0 || count > SENDLOG_SIZE || self->ring == NULL) {
        PyErr_SetString(PyExc_ValueError, "count must be within 0 .. the log's size");
        return NULL;
    }
    PyObject *out = PyList_New(count);
    if (out == NULL)
        return NULL;
    for (long i = 0; i < count; i++) {
        uint16_t seq = (uint16_t)(base + i);
        const SentPacket *entry = &self->ring[seq & (SENDLOG_SIZE - 1)];
        PyObject *item;
        if (entry->used && entry->seq == seq) {
            item = Py_BuildValue("(Lk)", (long long)entry->at_us, (unsigned long)entry->size);
            if (item == NULL) {
                Py_DECREF(out);
                return NULL;
            }
        } else {
            item = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(out, i, item);
    }
    return out;
}

static PyObject *
SendLog_get_next(SendLog *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->next);
}

static PyObject *
SendLog_get_packets(SendLog *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->packets);
}

static PyObject *
SendLog_get_disorder(SendLog *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->disorder);
}

static PyObject *
SendLog_get_bytes(SendLog *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->bytes);
}

PyObject *
sendlog_clock(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLongLong((long long)monotonic_us());
}

static PyMethodDef SendLog_methods[] = {
    {"take", (PyCFunction)SendLog_take, METH_O,
     "take(size) -> int: the next number, recorded as sent now"},
    {"lookup", (PyCFunction)(void (*)(void))SendLog_lookup, METH_FASTCALL,
     "lookup(base, count) -> list[(sent_us, size) | None]"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SendLog_getset[] = {
    {"next", (getter)SendLog_get_next, NULL, "the number the next packet gets", NULL},
    {"packets", (getter)SendLog_get_packets, NULL, "packets recorded", NULL},
    {"bytes", (getter)SendLog_get_bytes, NULL, "bytes recorded", NULL},
    {"disorder", (getter)SendLog_get_disorder, NULL,
     "packets logged out of number order (0 unless a bug)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject SendLogType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.SendLog",
    .tp_doc = "SendLog(first=0): sent packets by transport-wide sequence number",
    .tp_basicsize = sizeof(SendLog),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SendLog_init,
    .tp_dealloc = (destructor)SendLog_dealloc,
    .tp_methods = SendLog_methods,
    .tp_getset = SendLog_getset,
};
