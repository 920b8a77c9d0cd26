/*
 * What media/_udpsend.c (the UDP output, SRTP in) and media/_fanout.c (the
 * per-subscriber rewrite and batching) share: one extension, two files.
 */
#ifndef HUDDLE_UDPSEND_H
#define HUDDLE_UDPSEND_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <sys/socket.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define MAX_SEGMENTS 64
#define MAX_BATCH_BYTES 60000
#define MAX_TRAILER (16 + 128)
#define SCRATCH_SIZE (MAX_BATCH_BYTES + 2048)

typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/*
 * One subscriber connection's output: libsrtp's session (by address) and,
 * when the selected pair is plain UDP, the socket and peer address. With
 * fd < 0 it only protects (TURN pairs: Python sends what it protected).
 */
typedef struct {
    PyObject_HEAD
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    void *ctx;
    protect_fn protect;
    PyObject *keep; /* the owner of ctx (pylibsrtp's Session): alive as long as we are */
    int gso;
    unsigned long long datagrams;
    unsigned long long syscalls;
    unsigned long long dropped;
    int last_errno; /* the last send error other than EAGAIN, 0 if none */
    int gso_errno;  /* why GSO was switched off, 0 if it was not */
} UdpOut;

extern PyTypeObject UdpOutType;

/* The receive half of one SRTP session: libsrtp's unprotect by address. */
typedef struct {
    PyObject_HEAD
    void *ctx;
    protect_fn unprotect;
    protect_fn unprotect_rtcp;
    unsigned long long failures;
    int last_error; /* libsrtp's status of the last failure, 0 if none */
} SrtpIn;

extern PyTypeObject SrtpInType;

/* The plaintext of `arg` (RTP or RTCP, by `fn`) as a new bytes object, or None
 * when libsrtp refuses it (counted in failures). */
PyObject *srtpin_run(SrtpIn *self, PyObject *arg, protect_fn fn);

/* One incoming packet as the fan-out reads it (media/downstream.py's packet
 * tuple); -1 for an absent picture id, TL0PICIDX or level. */
typedef struct {
    const unsigned char *data;
    Py_ssize_t size, start, end;
    long seq, ts, pid, pid_at, tl0, tl0_at, level;
    int marker, keyframe;
    int rtx; /* arrived as a retransmission (RFC 4588): not the layer's own rate */
} Packet;

/* A big-endian 32-bit field. */
static inline uint32_t
rtp_get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The fan-out's packet tuple (media/downstream.py) of `data` as `p` describes it. */
PyObject *packet_tuple(PyObject *data, const Packet *p);

/* NTP time now (for abs-send-time), read once per incoming packet. */
uint64_t ntp_now(void);
/* Whether `down` (a Down) took the packet: 1 or 0; -1 (TypeError) if not a Down. */
int fanout_take(PyObject *down, const Packet *p, uint64_t ntp);
/* Send what `down` (a Down) queued. */
void fanout_flush_one(PyObject *down);
/* Read the VP8 payload descriptor of d[start:end] into p's keyframe, pid,
 * pid_at, tl0 and tl0_at (RFC 7741 4.2); -1 if it is truncated. */
int vp8_describe(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, Packet *p);

/* The frame size a VP8 keyframe's first packet d[start:end] announces; -1 if
 * it is not one (or is truncated). */
int vp8_keyframe_size(const unsigned char *d, Py_ssize_t start, Py_ssize_t end, int *width,
                      int *height);

/* What one subscriber connection sent, by transport-wide sequence number
 * (media/_sendlog.c). */
#define SENDLOG_SIZE 8192
/* What a datagram costs a link beyond itself: its IPv4 and UDP headers. The send
 * log counts it (the estimate is of what the link carries: a 400 kbit/s shaper
 * counts ~28 bytes more per packet than the SRTP the SFU writes, 12 % at audio's
 * and a lowest layer's packet rates) and so does the pacer, as libwebrtc does. */
#define TRANSPORT_OVERHEAD 28
typedef struct {
    int64_t at_us;
    uint32_t size;
    uint16_t seq;
    uint8_t used;
} SentPacket;

typedef struct {
    PyObject_HEAD
    SentPacket *ring;
    uint16_t next;
    unsigned long long packets, bytes;
    unsigned long long disorder; /* packets logged out of number order (a bug if not 0) */
    long last_logged;            /* the number logged last, -1 before any */
    /* The Down (borrowed) whose queued batch holds numbered packets not sent yet:
     * another Down numbering a packet sends that batch first, so that numbers
     * leave in order. It clears this when it sends or goes. */
    PyObject *pending;
} SendLog;

extern PyTypeObject SendLogType;
PyObject *sendlog_clock(PyObject *module, PyObject *ignored);
/* CLOCK_MONOTONIC in microseconds (Python's time.monotonic). */
int64_t monotonic_us(void);
void sendlog_record(SendLog *log, uint16_t seq, size_t size, int64_t at_us);

/* The receive path (media/_receive.c). */
extern PyTypeObject ReceiverType;
extern PyTypeObject InStreamType;
extern PyTypeObject SinkType;
extern PyTypeObject DownType;

/* Send `count` protected datagrams laid out every `seg` bytes in buf[0:end]
 * (the last may be shorter); returns the bytes the kernel took. */
Py_ssize_t udpout_send_run(UdpOut *self, unsigned char *buf, size_t end, size_t seg, int count);

/* One subscriber connection's pacer (media/_pacer.c). */
typedef struct Pacer Pacer;
extern PyTypeObject PacerType;
/* Send or queue a protected batch (as udpout_send_run takes it) of `out`, its numbered
 * datagrams logged in `log` as they leave (`twcc`: their numbers, -1 if none); returns
 * the bytes sent or queued. */
Py_ssize_t pacer_submit(Pacer *p, UdpOut *out, SendLog *log, const unsigned char *buf,
                        size_t end, size_t seg, int count, const long *twcc);
/* Whether `p` paces (a rate, or something still waiting). */
int pacer_active(const Pacer *p);

PyObject *fanout_forward(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *fanout_flush(PyObject *module, PyObject *downs);

extern PyTypeObject RtpPacketType;
PyObject *rtp_parse(PyObject *module, PyObject *data);
PyObject *rtp_vp8_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
