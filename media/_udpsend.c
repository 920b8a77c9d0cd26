/*
 * media._udpsend: SRTP-protect a frame's RTP packets in place and send them
 * with one UDP GSO sendmsg, in C; and unprotect what arrives (SrtpIn).
 *
 * The same algorithm as media/udpout.py's pure-Python DatagramOut (which is
 * the reference and the fallback where this module is not built): packets are
 * copied into one scratch buffer, protected there with libsrtp's
 * srtp_protect, and runs of equal-size segments (the last may be shorter)
 * leave in one sendmsg with a UDP_SEGMENT control message, or one sendto per
 * packet where GSO is off or refused. Per subscriber and frame that saves the
 * interpreter work of the loop, which on the SFU's fan-out is most of the
 * cost of a forwarded packet.
 *
 * libsrtp is not linked here: the caller passes the address of
 * srtp_protect and of the session's srtp_t, taken from pylibsrtp's cffi
 * binding, so the one libsrtp in the process (pylibsrtp's) does the work.
 * The GIL is held throughout: sends are non-blocking, and the static scratch
 * buffer relies on it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "_udpsend.h"

static unsigned char scratch[SCRATCH_SIZE];

static int
is_gso_errno(int err)
{
    return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP
        || err == EMSGSIZE;
}

static int
UdpOut_init(UdpOut *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "host", "port", "ctx", "protect", "gso", "keep", NULL};
    int fd, port, gso = 1;
    const char *host;
    unsigned long long ctx, protect;
    PyObject *keep = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "isiKK|pO", kwlist, &fd, &host, &port, &ctx,
                                     &protect, &gso, &keep))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    if (ctx == 0 || protect == 0) {
        PyErr_SetString(PyExc_ValueError, "null SRTP context or protect function");
        return -1;
    }
    memset(&self->addr, 0, sizeof self->addr);
    self->addrlen = 0;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->addr;
    if (fd < 0) {
        fd = -1; /* protect only */
    } else if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        self->addrlen = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        self->addrlen = sizeof *v6;
    } else {
        PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
        return -1;
    }
    self->fd = fd;
    self->ctx = (void *)(uintptr_t)ctx;
    self->protect = (protect_fn)(uintptr_t)protect;
    Py_INCREF(keep);
    Py_XSETREF(self->keep, keep);
    self->gso = gso;
    self->datagrams = self->syscalls = self->dropped = 0;
    self->last_errno = self->gso_errno = 0;
    return 0;
}

static void
UdpOut_dealloc(UdpOut *self)
{
    Py_CLEAR(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

Py_ssize_t
udpout_send_run(UdpOut *self, unsigned char *buf, size_t end, size_t seg, int count)
{
    ssize_t r;
    if (self->fd < 0) {
        self->dropped += count;
        return 0;
    }
    self->datagrams += count;
    if (count > 1 && self->gso) {
        struct iovec iov = {buf, end};
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } control;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        memset(&control, 0, sizeof control);
        msg.msg_name = &self->addr;
        msg.msg_namelen = self->addrlen;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)seg;
        memcpy(CMSG_DATA(cm), &size, sizeof size);
        self->syscalls++;
        do {
            r = sendmsg(self->fd, &msg, 0);
        } while (r < 0 && errno == EINTR);
        if (r >= 0)
            return (Py_ssize_t)end;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            self->dropped += count;
            return 0;
        }
        if (!is_gso_errno(errno)) {
            self->last_errno = errno;
            self->dropped += count;
            return 0;
        }
        self->gso = 0;
        self->gso_errno = errno;
    }
    Py_ssize_t sent = 0;
    for (size_t start = 0; start < end; start += seg) {
        size_t len = end - start < seg ? end - start : seg;
        self->syscalls++;
        do {
            r = sendto(self->fd, buf + start, len, 0, (struct sockaddr *)&self->addr,
                       self->addrlen);
        } while (r < 0 && errno == EINTR);
        if (r >= 0) {
            sent += (Py_ssize_t)len;
        } else {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                self->last_errno = errno;
            self->dropped++;
        }
    }
    return sent;
}

static PyObject *
UdpOut_send(UdpOut *self, PyObject *packets)
{
    if (!PyList_Check(packets)) {
        PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
        return NULL;
    }
    if (self->protect == NULL) { /* allocated but never initialised */
        PyErr_SetString(PyExc_RuntimeError, "UdpOut not initialised");
        return NULL;
    }
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ConnectionError, "datagram output closed (or protect-only)");
        return NULL;
    }
    Py_ssize_t n_packets = PyList_GET_SIZE(packets);
    Py_ssize_t total = 0;
    size_t off = 0, plain = 0, seg = 0;
    int count = 0, closed = 0;
    for (Py_ssize_t i = 0; i < n_packets; i++) {
        PyObject *item = PyList_GET_ITEM(packets, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "packets must be a list of bytes");
            return NULL;
        }
        size_t n = (size_t)PyBytes_GET_SIZE(item);
        if (n + MAX_TRAILER > MAX_BATCH_BYTES) {
            PyErr_SetString(PyExc_ValueError, "RTP packet too large");
            return NULL;
        }
        if (count && (closed || n > plain || count >= MAX_SEGMENTS
                      || off + n + MAX_TRAILER > MAX_BATCH_BYTES)) {
            total += udpout_send_run(self, scratch, off, seg, count);
            off = 0;
            count = 0;
            closed = 0;
        }
        memcpy(scratch + off, PyBytes_AS_STRING(item), n);
        int len = (int)n;
        int rc = self->protect(self->ctx, scratch + off, &len);
        if (rc != 0) {
            /* Send what was protected before the failure, then report it. */
            if (count)
                total += udpout_send_run(self, scratch, off, seg, count);
            PyErr_Format(PyExc_RuntimeError, "srtp_protect failed (%d)", rc);
            return NULL;
        }
        if (count == 0) {
            plain = n;
            seg = (size_t)len;
        } else if (n < plain) {
            closed = 1;
        }
        off += (size_t)len;
        count++;
    }
    if (count)
        total += udpout_send_run(self, scratch, off, seg, count);
    return PyLong_FromSsize_t(total);
}

static PyObject *
UdpOut_close(UdpOut *self, PyObject *Py_UNUSED(ignored))
{
    /* The fd belongs to the Python socket that owns it; forget it only. */
    self->fd = -1;
    Py_RETURN_NONE;
}

static PyObject *
UdpOut_get_gso(UdpOut *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->gso);
}

#define ULL_GETTER(name)                                                  \
    static PyObject *UdpOut_get_##name(UdpOut *self, void *Py_UNUSED(c)) \
    {                                                                     \
        return PyLong_FromUnsignedLongLong(self->name);                  \
    }
ULL_GETTER(datagrams)
ULL_GETTER(syscalls)
ULL_GETTER(dropped)

static PyObject *
UdpOut_get_last_errno(UdpOut *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->last_errno);
}

static PyObject *
UdpOut_get_gso_errno(UdpOut *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->gso_errno);
}

static PyMethodDef UdpOut_methods[] = {
    {"send", (PyCFunction)UdpOut_send, METH_O,
     "send(packets: list[bytes]) -> int: protect and send in order; protected bytes sent"},
    {"close", (PyCFunction)UdpOut_close, METH_NOARGS, "forget the descriptor (idempotent)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef UdpOut_getset[] = {
    {"gso", (getter)UdpOut_get_gso, NULL, "whether GSO is (still) used", NULL},
    {"datagrams", (getter)UdpOut_get_datagrams, NULL, "datagrams handed to the kernel", NULL},
    {"syscalls", (getter)UdpOut_get_syscalls, NULL, "send syscalls made", NULL},
    {"dropped", (getter)UdpOut_get_dropped, NULL, "datagrams the socket refused", NULL},
    {"last_errno", (getter)UdpOut_get_last_errno, NULL, "last send error, 0 if none", NULL},
    {"gso_errno", (getter)UdpOut_get_gso_errno, NULL, "why GSO was turned off, 0 if not", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject UdpOutType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.UdpOut",
    .tp_doc = "UdpOut(fd, host, port, ctx, protect, gso=True): in-place SRTP + UDP GSO output",
    .tp_basicsize = sizeof(UdpOut),
    .tp_dealloc = (destructor)UdpOut_dealloc,
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)UdpOut_init,
    .tp_methods = UdpOut_methods,
    .tp_getset = UdpOut_getset,
};

/* --- receive side: SRTP/SRTCP unprotect into a new bytes object ------------ */

static int
SrtpIn_init(SrtpIn *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ctx", "unprotect", "unprotect_rtcp", NULL};
    unsigned long long ctx, unprotect, unprotect_rtcp;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKK", kwlist, &ctx, &unprotect,
                                     &unprotect_rtcp))
        return -1;
    if (!ctx || !unprotect || !unprotect_rtcp) {
        PyErr_SetString(PyExc_ValueError, "null libsrtp context or function");
        return -1;
    }
    self->ctx = (void *)(uintptr_t)ctx;
    self->unprotect = (protect_fn)(uintptr_t)unprotect;
    self->unprotect_rtcp = (protect_fn)(uintptr_t)unprotect_rtcp;
    self->failures = 0;
    self->last_error = 0;
    return 0;
}

/* The plaintext of ``data`` (RTP or RTCP), or None when libsrtp refuses it. */
PyObject *
srtpin_run(SrtpIn *self, PyObject *arg, protect_fn fn)
{
    char *src;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(arg, &src, &size) < 0)
        return NULL;
    if (size < 12 || size > 0xFFFF) {
        self->failures++;
        self->last_error = -1;
        Py_RETURN_NONE;
    }
    PyObject *out = PyBytes_FromStringAndSize(src, size);
    if (out == NULL)
        return NULL;
    int len = (int)size;
    int rc = fn(self->ctx, PyBytes_AS_STRING(out), &len);
    if (rc != 0 || len < 0 || len > size) {
        Py_DECREF(out);
        self->failures++;
        self->last_error = rc ? rc : -1;
        Py_RETURN_NONE;
    }
    if (len != size && _PyBytes_Resize(&out, len) < 0)
        return NULL;
    return out;
}

static PyObject *
SrtpIn_rtp(SrtpIn *self, PyObject *arg)
{
    return srtpin_run(self, arg, self->unprotect);
}

static PyObject *
SrtpIn_rtcp(SrtpIn *self, PyObject *arg)
{
    return srtpin_run(self, arg, self->unprotect_rtcp);
}

static PyObject *
SrtpIn_get_failures(SrtpIn *self, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(self->failures);
}

static PyObject *
SrtpIn_get_last_error(SrtpIn *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(self->last_error);
}

static PyMethodDef SrtpIn_methods[] = {
    {"rtp", (PyCFunction)SrtpIn_rtp, METH_O,
     "rtp(data: bytes) -> bytes | None: unprotected RTP, None if refused"},
    {"rtcp", (PyCFunction)SrtpIn_rtcp, METH_O,
     "rtcp(data: bytes) -> bytes | None: unprotected RTCP, None if refused"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SrtpIn_getset[] = {
    {"failures", (getter)SrtpIn_get_failures, NULL, "packets libsrtp refused", NULL},
    {"last_error", (getter)SrtpIn_get_last_error, NULL, "status of the last refusal", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject SrtpInType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._udpsend.SrtpIn",
    .tp_doc = "SrtpIn(ctx, unprotect, unprotect_rtcp): libsrtp unprotect without cffi",
    .tp_basicsize = sizeof(SrtpIn),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SrtpIn_init,
    .tp_methods = SrtpIn_methods,
    .tp_getset = SrtpIn_getset,
};

static PyMethodDef udpsend_functions[] = {
    {"forward", (PyCFunction)(void (*)(void))fanout_forward, METH_FASTCALL,
     "forward(downs: list[Down], packet: tuple, flush: bool) -> int: rewrite, protect and "
     "queue one packet for every down that takes it (sending the queues when flush); "
     "returns how many took it"},
    {"flush", (PyCFunction)fanout_flush, METH_O, "flush(downs: list[Down]): send what they queued"},
    {"parse_rtp", (PyCFunction)rtp_parse, METH_O,
     "parse_rtp(data: bytes) -> RtpPacket | str: the packet, or why it is malformed"},
    {"vp8_packet", (PyCFunction)(void (*)(void))rtp_vp8_packet, METH_FASTCALL,
     "vp8_packet(packet: RtpPacket, level: int) -> tuple | None: the fan-out's packet tuple"},
    {"monotonic_us", (PyCFunction)sendlog_clock, METH_NOARGS,
     "monotonic_us() -> int: the clock of SendLog (CLOCK_MONOTONIC, µs)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef udpsend_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "media._udpsend",
    .m_doc = "In-place SRTP protection and UDP GSO sends for the SFU (see media/udpout.py), "
             "and the per-subscriber fan-out (see media/downstream.py).",
    .m_size = -1,
    .m_methods = udpsend_functions,
};

PyMODINIT_FUNC
PyInit__udpsend(void)
{
    if (PyType_Ready(&UdpOutType) < 0 || PyType_Ready(&SrtpInType) < 0
        || PyType_Ready(&DownType) < 0 || PyType_Ready(&RtpPacketType) < 0
        || PyType_Ready(&ReceiverType) < 0 || PyType_Ready(&InStreamType) < 0
        || PyType_Ready(&SinkType) < 0 || PyType_Ready(&SendLogType) < 0
        || PyType_Ready(&PacerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&udpsend_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&UdpOutType);
    if (PyModule_AddObject(m, "UdpOut", (PyObject *)&UdpOutType) < 0) {
        Py_DECREF(&UdpOutType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SrtpInType);
    if (PyModule_AddObject(m, "SrtpIn", (PyObject *)&SrtpInType) < 0) {
        Py_DECREF(&SrtpInType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RtpPacketType);
    if (PyModule_AddObject(m, "RtpPacket", (PyObject *)&RtpPacketType) < 0) {
        Py_DECREF(&RtpPacketType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&DownType);
    if (PyModule_AddObject(m, "Down", (PyObject *)&DownType) < 0) {
        Py_DECREF(&DownType);
        Py_DECREF(m);
        return NULL;
    }
    PyTypeObject *receive_types[] = {&ReceiverType, &InStreamType, &SinkType, &SendLogType,
                                     &PacerType};
    const char *receive_names[] = {"Receiver", "InStream", "Sink", "SendLog", "Pacer"};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(receive_types[i]);
        if (PyModule_AddObject(m, receive_names[i], (PyObject *)receive_types[i]) < 0) {
            Py_DECREF(receive_types[i]);
            Py_DECREF(m);
            return NULL;
        }
    }
    if (PyModule_AddIntConstant(m, "MAX_SEGMENTS", MAX_SEGMENTS) < 0
        || PyModule_AddIntConstant(m, "MAX_BATCH_BYTES", MAX_BATCH_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
