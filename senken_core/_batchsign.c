/* Sign many readings in one call, without holding the GIL; encode many reading bodies.

   Each signature is Ed25519 over tag || SHA-256(body), exactly as senken_core.keys.DeviceKey.sign
   makes it (docs/protocol.md). The primitives are libsodium's, taken from the copy PyNaCl ships:
   senken_core.keys passes the addresses of crypto_hash_sha256 and crypto_sign_detached to bind()
   once, so this file needs no libsodium headers and links against nothing.

   Why: a Python thread that signs one reading per call gives up the GIL for every signature and
   then waits to get it back while the serial thread parses; on two cores the two threads then
   run one after the other. One call per batch releases the GIL once for the whole batch.

   The validator's side: decode_reading (Reading.from_canonical's fast path) and verify_detached
   (one reading's signature check, bound by validator.verify to the same libsodium). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef int (*sign_fn)(unsigned char *sig, unsigned long long *siglen, const unsigned char *m,
                       unsigned long long mlen, const unsigned char *sk);
typedef int (*sha256_fn)(unsigned char *out, const unsigned char *in, unsigned long long inlen);

static sign_fn p_sign = NULL;
static sha256_fn p_sha256 = NULL;

#define SIG_BYTES 64
#define SK_BYTES 64
#define DIGEST_BYTES 32
#define MAX_TAG 64

static PyObject *bind(PyObject *self, PyObject *args) {
    unsigned long long sign_addr, sha_addr;
    if (!PyArg_ParseTuple(args, "KK", &sign_addr, &sha_addr)) return NULL;
    if (sign_addr == 0 || sha_addr == 0) {
        PyErr_SetString(PyExc_ValueError, "null function address");
        return NULL;
    }
    p_sign = (sign_fn)(uintptr_t)sign_addr;
    p_sha256 = (sha256_fn)(uintptr_t)sha_addr;
    Py_RETURN_NONE;
}

static void wipe(volatile unsigned char *p, size_t n) {
    while (n--) *p++ = 0;
}

static PyObject *sign_many(PyObject *self, PyObject *args) {
    Py_buffer tag, sk;
    PyObject *bodies;
    if (p_sign == NULL || p_sha256 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() has not been called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*Oy*", &tag, &bodies, &sk)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    PyObject **held = NULL;
    const unsigned char **ptrs = NULL;
    unsigned long long *lens = NULL;
    unsigned char *sigs = NULL;
    unsigned char key[SK_BYTES], msg[MAX_TAG + DIGEST_BYTES];
    Py_ssize_t n = 0, i;
    int failed = 0;

    if (tag.len > MAX_TAG || sk.len != SK_BYTES) {
        PyErr_SetString(PyExc_ValueError, "tag longer than 64 bytes or secret key not 64 bytes");
        goto done;
    }
    seq = PySequence_Fast(bodies, "bodies must be a sequence of bytes");
    if (seq == NULL) goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    held = PyMem_Malloc(sizeof(*held) * (size_t)(n ? n : 1));
    ptrs = PyMem_Malloc(sizeof(*ptrs) * (size_t)(n ? n : 1));
    lens = PyMem_Malloc(sizeof(*lens) * (size_t)(n ? n : 1));
    sigs = PyMem_Malloc((size_t)SIG_BYTES * (size_t)(n ? n : 1));
    if (held == NULL || ptrs == NULL || lens == NULL || sigs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "bodies[%zd] is not bytes", i);
            goto done;
        }
    }
    /* keep every body alive while the GIL is released: another thread may change the list */
    for (i = 0; i < n; i++) {
        held[i] = items[i];
        Py_INCREF(held[i]);
        ptrs[i] = (const unsigned char *)PyBytes_AS_STRING(items[i]);
        lens[i] = (unsigned long long)PyBytes_GET_SIZE(items[i]);
    }
    memcpy(key, sk.buf, SK_BYTES);
    memcpy(msg, tag.buf, (size_t)tag.len);
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n && !failed; i++) {
        failed |= p_sha256(msg + tag.len, ptrs[i], lens[i]) != 0;
        failed |= p_sign(sigs + SIG_BYTES * i, NULL, msg,
                         (unsigned long long)tag.len + DIGEST_BYTES, key) != 0;
    }
    Py_END_ALLOW_THREADS
    wipe(key, sizeof key);
    for (i = 0; i < n; i++) Py_DECREF(held[i]);
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "libsodium failed to sign");
        goto done;
    }
    result = PyList_New(n);
    if (result == NULL) goto done;
    for (i = 0; i < n; i++) {
        PyObject *sig = PyBytes_FromStringAndSize((const char *)sigs + SIG_BYTES * i, SIG_BYTES);
        if (sig == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, sig);
    }
done:
    PyMem_Free(held);
    PyMem_Free(ptrs);
    PyMem_Free(lens);
    PyMem_Free(sigs);
    Py_XDECREF(seq);
    PyBuffer_Release(&tag);
    PyBuffer_Release(&sk);
    return result;
}

/* The canonical CBOR head of an integer (RFC 8949 4.2.1: the shortest form). */
static size_t cbor_int(unsigned char *out, long long v) {
    unsigned char major = 0x00;
    unsigned long long arg = (unsigned long long)v;
    if (v < 0) {
        major = 0x20;
        arg = (unsigned long long)(-1 - v);
    }
    if (arg < 24) {
        out[0] = major | (unsigned char)arg;
        return 1;
    }
    int bytes = arg < 0x100 ? 1 : arg < 0x10000 ? 2 : arg < 0x100000000ULL ? 4 : 8;
    out[0] = major | (unsigned char)(bytes == 1 ? 24 : bytes == 2 ? 25 : bytes == 4 ? 26 : 27);
    for (int i = 0; i < bytes; i++) out[1 + i] = (unsigned char)(arg >> (8 * (bytes - 1 - i)));
    return 1 + (size_t)bytes;
}

/* encode_many(chunks, ints, k): for each row of k int64s, the bytes
   chunks[0] + cbor(row[0]) + chunks[1] + ... + cbor(row[k-1]) + chunks[k]. */
static PyObject *encode_many(PyObject *self, PyObject *args) {
    PyObject *chunks;
    Py_buffer ints;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "Oy*n", &chunks, &ints, &k)) return NULL;
    PyObject *result = NULL, *seq = NULL;
    unsigned char *body = NULL;
    if (k < 1 || ints.itemsize != 8 || ints.len % (8 * k) != 0) {
        PyErr_SetString(PyExc_ValueError, "ints must hold rows of k int64 values");
        goto done;
    }
    seq = PySequence_Fast(chunks, "chunks must be a sequence of bytes");
    if (seq == NULL) goto done;
    if (PySequence_Fast_GET_SIZE(seq) != k + 1) {
        PyErr_SetString(PyExc_ValueError, "need k + 1 chunks");
        goto done;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    size_t fixed = 0;
    for (Py_ssize_t j = 0; j <= k; j++) {
        if (!PyBytes_Check(items[j])) {
            PyErr_SetString(PyExc_TypeError, "chunks must be bytes");
            goto done;
        }
        fixed += (size_t)PyBytes_GET_SIZE(items[j]);
    }
    body = PyMem_Malloc(fixed + 9 * (size_t)k);
    if (body == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t rows = ints.len / (8 * k);
    const long long *v = (const long long *)ints.buf;
    result = PyList_New(rows);
    if (result == NULL) goto done;
    for (Py_ssize_t r = 0; r < rows; r++) {
        size_t n = 0;
        for (Py_ssize_t j = 0; j < k; j++) {
            memcpy(body + n, PyBytes_AS_STRING(items[j]), (size_t)PyBytes_GET_SIZE(items[j]));
            n += (size_t)PyBytes_GET_SIZE(items[j]);
            n += cbor_int(body + n, v[r * k + j]);
        }
        memcpy(body + n, PyBytes_AS_STRING(items[k]), (size_t)PyBytes_GET_SIZE(items[k]));
        n += (size_t)PyBytes_GET_SIZE(items[k]);
        PyObject *b = PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)n);
        if (b == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, r, b);
    }
done:
    PyMem_Free(body);
    Py_XDECREF(seq);
    PyBuffer_Release(&ints);
    return result;
}

/* ---- serial frames: the fast path of senken_core.frame.parse_valid_frame ----
   parse_frames(lines, kinds, Frame) -> [Frame or None, ...]
   A line gets a tuple only when it is a well-formed SK1 frame of a known kind, checksum right,
   every channel present in order and in range: exactly the frames parse_valid_frame's own
   fast path accepts. Anything else gets None, and Python parses it (and names the error).
   kinds: ((kind_bytes, kind_str, ((name_bytes, name_str, minimum, maximum), ...)), ...). */

#define MAX_FRAME_BYTES 256

static unsigned long crc_table[256];
static int crc_ready = 0;

static void crc_init(void) {
    for (unsigned long n = 0; n < 256; n++) {
        unsigned long c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320UL ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
    crc_ready = 1;
}

static unsigned long crc32_iso_hdlc(const unsigned char *p, Py_ssize_t n) {
    unsigned long c = 0xFFFFFFFFUL;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFUL;
}

/* Unsigned decimal at p[*i], no sign, no leading zero, at most max_digits digits. */
static int read_uint(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i, int max_digits,
                     unsigned long long *out) {
    Py_ssize_t start = *i;
    unsigned long long v = 0;
    while (*i < n && p[*i] >= '0' && p[*i] <= '9') {
        if (*i - start >= max_digits) return 0;
        v = v * 10 + (unsigned long long)(p[*i] - '0');
        (*i)++;
    }
    if (*i == start || (p[start] == '0' && *i - start > 1)) return 0;
    *out = v;
    return 1;
}

static PyObject *attr_names[4] = {NULL, NULL, NULL, NULL};

static PyObject *parse_one(const unsigned char *p, Py_ssize_t n, PyObject *kinds,
                           PyTypeObject *frame_type) {
    if (n > MAX_FRAME_BYTES) return NULL;
    while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == '\n')) n--;
    /* $SK1,counter,device_ms,kind,values*CRC8 */
    if (n < 14 || p[0] != '$' || p[n - 9] != '*' || memcmp(p + 1, "SK1,", 4) != 0) return NULL;
    unsigned long want = 0;
    for (Py_ssize_t j = n - 8; j < n; j++) {
        int d = p[j] >= '0' && p[j] <= '9' ? p[j] - '0' : p[j] >= 'A' && p[j] <= 'F' ? p[j] - 'A' + 10 : -1;
        if (d < 0) return NULL;
        want = (want << 4) | (unsigned long)d;
    }
    Py_ssize_t end = n - 9, i = 5;
    unsigned long long counter, device_ms;
    if (!read_uint(p, end, &i, 10, &counter) || counter >= 4294967296ULL || i >= end || p[i++] != ',')
        return NULL;
    if (!read_uint(p, end, &i, 19, &device_ms) || i >= end || p[i++] != ',') return NULL;
    Py_ssize_t kind_start = i;
    while (i < end && p[i] != ',') i++;
    if (i >= end) return NULL;
    Py_ssize_t kind_len = i - kind_start;
    i++;
    PyObject *kind = NULL;
    Py_ssize_t nk = PyTuple_GET_SIZE(kinds);
    for (Py_ssize_t k = 0; k < nk; k++) {
        PyObject *spec = PyTuple_GET_ITEM(kinds, k);
        PyObject *name = PyTuple_GET_ITEM(spec, 0);
        if (PyBytes_GET_SIZE(name) == kind_len &&
            memcmp(PyBytes_AS_STRING(name), p + kind_start, (size_t)kind_len) == 0) {
            kind = spec;
            break;
        }
    }
    if (kind == NULL) return NULL;
    PyObject *channels = PyTuple_GET_ITEM(kind, 2);
    Py_ssize_t nc = PyTuple_GET_SIZE(channels);
    long long values[32];
    if (nc > 32) return NULL;
    for (Py_ssize_t c = 0; c < nc; c++) {
        PyObject *ch = PyTuple_GET_ITEM(channels, c);
        PyObject *cname = PyTuple_GET_ITEM(ch, 0);
        Py_ssize_t cl = PyBytes_GET_SIZE(cname);
        if (c > 0) {
            if (i >= end || p[i++] != ',') return NULL;
        }
        if (end - i < cl + 2 || memcmp(p + i, PyBytes_AS_STRING(cname), (size_t)cl) != 0 ||
            p[i + cl] != '=')
            return NULL;
        i += cl + 1;
        int negative = 0;
        if (p[i] == '-') {
            negative = 1;
            i++;
        }
        unsigned long long mag;
        /* 18 digits at most here: every channel range is within 2**53 (16 digits), so a longer
           number is out of range, and Python reports it */
        if (!read_uint(p, end, &i, 18, &mag) || (negative && mag == 0)) return NULL;
        long long v = negative ? -(long long)mag : (long long)mag;
        long long lo = PyLong_AsLongLong(PyTuple_GET_ITEM(ch, 2));
        long long hi = PyLong_AsLongLong(PyTuple_GET_ITEM(ch, 3));
        if (v < lo || v > hi) return NULL;
        values[c] = v;
    }
    if (i != end) return NULL;
    if (crc32_iso_hdlc(p + 1, end - 1) != want) return NULL;
    PyObject *pairs = PyTuple_New(nc);
    if (pairs == NULL) return NULL;
    for (Py_ssize_t c = 0; c < nc; c++) {
        PyObject *pair = PyTuple_New(2), *value = PyLong_FromLongLong(values[c]);
        if (pair == NULL || value == NULL) {
            Py_XDECREF(pair);
            Py_XDECREF(value);
            Py_DECREF(pairs);
            return NULL;
        }
        PyObject *name = PyTuple_GET_ITEM(PyTuple_GET_ITEM(channels, c), 1);
        Py_INCREF(name);
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyTuple_SET_ITEM(pairs, c, pair);
    }
    /* The Frame, built as its dataclass __init__ builds it (object.__setattr__ per field). */
    PyObject *frame = frame_type->tp_alloc(frame_type, 0);
    PyObject *fields[4] = {PyLong_FromUnsignedLongLong(counter),
                           PyLong_FromUnsignedLongLong(device_ms), PyTuple_GET_ITEM(kind, 1),
                           pairs};
    Py_INCREF(fields[2]);
    int bad = frame == NULL || fields[0] == NULL || fields[1] == NULL;
    for (int f = 0; f < 4 && !bad; f++) bad = PyObject_GenericSetAttr(frame, attr_names[f], fields[f]) < 0;
    for (int f = 0; f < 4; f++) Py_XDECREF(fields[f]);
    if (bad) {
        Py_XDECREF(frame);
        return NULL;
    }
    return frame;
}

static PyObject *parse_frames(PyObject *self, PyObject *args) {
    PyObject *lines, *kinds;
    PyTypeObject *frame_type;
    if (!PyArg_ParseTuple(args, "OO!O!", &lines, &PyTuple_Type, &kinds, &PyType_Type, &frame_type))
        return NULL;
    if (!crc_ready) crc_init();
    if (attr_names[0] == NULL) {
        const char *names[4] = {"counter", "device_ms", "kind", "values"};
        for (int f = 0; f < 4; f++) {
            attr_names[f] = PyUnicode_InternFromString(names[f]);
            if (attr_names[f] == NULL) return NULL;
        }
    }
    PyObject *seq = PySequence_Fast(lines, "lines must be a sequence of bytes");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = PyList_New(n);
    if (result == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *line = PySequence_Fast_GET_ITEM(seq, r);
        PyObject *item = NULL;
        if (PyBytes_Check(line)) {
            item = parse_one((const unsigned char *)PyBytes_AS_STRING(line),
                             PyBytes_GET_SIZE(line), kinds, frame_type);
            if (item == NULL && PyErr_Occurred()) {
                Py_DECREF(seq);
                Py_DECREF(result);
                return NULL;
            }
        }
        if (item == NULL) {
            item = Py_None;
            Py_INCREF(item);
        }
        PyList_SET_ITEM(result, r, item);
    }
    Py_DECREF(seq);
    return result;
}

/* ---- reading bodies: the fast path of senken_core.reading.Reading.from_canonical ----
   decode_reading(body) -> (device, seq, ts_ms, kind, frame_counter, device_ms, pairs,
                            model_sha256, anomaly_ppm, scored_since_seq) or None.
   A tuple only for the canonical encoding (RFC 8949 4.2.1) of a map with exactly the reading
   fields, every one valid as Reading.from_canonical checks it; pairs are (channel, value) in
   the body's (canonical) order. Anything else gets None, and Python decodes it (and names the
   error). Strict by construction: every head in its shortest form, keys in canonical order,
   nothing after the map. */

typedef struct {
    const unsigned char *p;
    Py_ssize_t i, n;
} cursor;

static int lit(cursor *c, const char *s, Py_ssize_t len) {
    if (c->n - c->i < len || memcmp(c->p + c->i, s, (size_t)len) != 0) return 0;
    c->i += len;
    return 1;
}

/* The head of major type `major` at the cursor, in its shortest form: its argument. */
static int cbor_head(cursor *c, int major, unsigned long long *arg) {
    if (c->i >= c->n || c->p[c->i] >> 5 != major) return 0;
    unsigned info = c->p[c->i++] & 0x1F;
    int bytes;
    unsigned long long minimum;
    if (info < 24) {
        *arg = info;
        return 1;
    }
    switch (info) {
    case 24: bytes = 1; minimum = 24; break;
    case 25: bytes = 2; minimum = 0x100; break;
    case 26: bytes = 4; minimum = 0x10000; break;
    case 27: bytes = 8; minimum = 0x100000000ULL; break;
    default: return 0;
    }
    if (c->n - c->i < bytes) return 0;
    unsigned long long v = 0;
    for (int k = 0; k < bytes; k++) v = (v << 8) | c->p[c->i++];
    if (v < minimum) return 0;
    *arg = v;
    return 1;
}

/* A non-negative 63-bit integer field. */
static int cbor_u63(cursor *c, unsigned long long *v) {
    return cbor_head(c, 0, v) && *v < 0x8000000000000000ULL;
}

/* A text string of at most max_len bytes: its start and length (not yet decoded). */
static int cbor_text(cursor *c, Py_ssize_t max_len, Py_ssize_t *start, Py_ssize_t *len) {
    unsigned long long n;
    if (!cbor_head(c, 3, &n) || n > (unsigned long long)(c->n - c->i) ||
        n > (unsigned long long)max_len)
        return 0;
    *start = c->i;
    *len = (Py_ssize_t)n;
    c->i += (Py_ssize_t)n;
    return 1;
}

/* UTF-8 text as a str; NULL without an error set when it is not valid UTF-8. */
static PyObject *utf8(const unsigned char *p, Py_ssize_t n) {
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
    return s;
}

/* DEVICE_ID_PATTERN: [a-z0-9][a-z0-9-]{2,62} */
static int device_id(const unsigned char *p, Py_ssize_t n) {
    if (n < 3 || n > 63) return 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char ch = p[k];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (ch == '-' && k > 0)))
            return 0;
    }
    return 1;
}

/* Keys of the reading map in canonical order, each with its head. */
#define K_HEAD "\xab\x61v\x01\x63seq" /* map of 11, "v": 1, "seq" */
#define K_KIND "\x64kind"
#define K_TS "\x65ts_ms"
#define K_DEVICE "\x66" "device"
#define K_VALUES "\x66values"
#define K_DEVICE_MS "\x69" "device_ms"
#define K_ANOMALY "\x6b" "anomaly_ppm"
#define K_MODEL "\x6cmodel_sha256\x58\x20" /* and the head of 32 bytes */
#define K_FRAME_COUNTER "\x6d" "frame_counter"
#define K_SCORED_SINCE "\x70scored_since_seq"
#define LIT(c, s) lit(c, s, (Py_ssize_t)sizeof(s) - 1)

/* The pairs of the values map, or NULL (no error set: not a canonical values map). */
static PyObject *decode_values(cursor *c) {
    unsigned long long count;
    if (!cbor_head(c, 5, &count) || count > (unsigned long long)(c->n - c->i) / 2) return NULL;
    PyObject *pairs = PyTuple_New((Py_ssize_t)count);
    if (pairs == NULL) return NULL;
    const unsigned char *prev = NULL;
    Py_ssize_t prev_len = 0;
    for (Py_ssize_t k = 0; k < (Py_ssize_t)count; k++) {
        Py_ssize_t key_start = c->i, start, len;
        if (!cbor_text(c, PY_SSIZE_T_MAX, &start, &len)) goto fail;
        Py_ssize_t key_len = c->i - key_start;
        if (prev != NULL) {  /* keys strictly increasing, bytewise over their encodings */
            Py_ssize_t common = key_len < prev_len ? key_len : prev_len;
            int cmp = memcmp(c->p + key_start, prev, (size_t)common);
            if (cmp < 0 || (cmp == 0 && key_len <= prev_len)) goto fail;
        }
        prev = c->p + key_start;
        prev_len = key_len;
        if (c->i >= c->n) goto fail;
        int major = c->p[c->i] >> 5;
        unsigned long long arg;
        if (major > 1 || !cbor_head(c, major, &arg)) goto fail;
        PyObject *name = utf8(c->p + start, len);
        if (name == NULL) goto fail;
        PyObject *value;
        if (major == 0) {
            value = PyLong_FromUnsignedLongLong(arg);
        } else if (arg < 0x8000000000000000ULL) {
            value = PyLong_FromLongLong(-1 - (long long)arg);
        } else {  /* -1 - arg below -2**63: ~arg in Python */
            PyObject *a = PyLong_FromUnsignedLongLong(arg);
            value = a == NULL ? NULL : PyNumber_Invert(a);
            Py_XDECREF(a);
        }
        PyObject *pair = value == NULL ? NULL : PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_XDECREF(value);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyTuple_SET_ITEM(pairs, k, pair);
    }
    return pairs;
fail:
    Py_DECREF(pairs);
    return NULL;
}

static PyObject *decode_reading(PyObject *self, PyObject *arg) {
    if (!PyBytes_CheckExact(arg)) Py_RETURN_NONE;
    cursor cur = {(const unsigned char *)PyBytes_AS_STRING(arg), 0, PyBytes_GET_SIZE(arg)};
    cursor *c = &cur;
    unsigned long long seq, ts_ms, device_ms, ppm, counter, since;
    Py_ssize_t kind_start, kind_len, dev_start, dev_len, model_start;
    if (!LIT(c, K_HEAD) || !cbor_u63(c, &seq) || !LIT(c, K_KIND) ||
        !cbor_text(c, PY_SSIZE_T_MAX, &kind_start, &kind_len) || !LIT(c, K_TS) ||
        !cbor_u63(c, &ts_ms) || !LIT(c, K_DEVICE) || !cbor_text(c, 63, &dev_start, &dev_len) ||
        !device_id(c->p + dev_start, dev_len) || !LIT(c, K_VALUES))
        Py_RETURN_NONE;
    PyObject *pairs = decode_values(c);
    if (pairs == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    int ok = LIT(c, K_DEVICE_MS) && cbor_u63(c, &device_ms) && LIT(c, K_ANOMALY) &&
             cbor_u63(c, &ppm) && ppm <= 1000000 && LIT(c, K_MODEL) && c->n - c->i >= 32;
    model_start = c->i;
    c->i += 32;
    ok = ok && LIT(c, K_FRAME_COUNTER) && cbor_u63(c, &counter) && LIT(c, K_SCORED_SINCE) &&
         cbor_u63(c, &since) && since <= seq && c->i == c->n;
    if (!ok) {
        Py_DECREF(pairs);
        Py_RETURN_NONE;
    }
    PyObject *kind = utf8(c->p + kind_start, kind_len);
    if (kind == NULL) {
        Py_DECREF(pairs);
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    /* the device id is ASCII (checked above) */
    return Py_BuildValue("(NKKNKKNNKK)",
                         PyUnicode_FromStringAndSize((const char *)c->p + dev_start, dev_len),
                         seq, ts_ms, kind, counter, device_ms, pairs,
                         PyBytes_FromStringAndSize((const char *)c->p + model_start, 32), ppm,
                         since);
}

/* ---- verify one reading's signature: the validator's hot path ----
   verify_detached(tag, public_key, body, signature) -> SHA-256(body) if signature is
   public_key's Ed25519 signature over tag || SHA-256(body), else None. The same check as
   PyNaCl's VerifyKey.verify (crypto_sign_open verifies with crypto_sign_verify_detached), minus
   its copies; the digest is the body's, which the verifier keeps. Releases the GIL. */

typedef int (*verify_fn)(const unsigned char *sig, const unsigned char *m,
                         unsigned long long mlen, const unsigned char *pk);

static verify_fn p_verify = NULL;
static sha256_fn p_verify_sha256 = NULL;

static PyObject *bind_verify(PyObject *self, PyObject *args) {
    unsigned long long verify_addr, sha_addr;
    if (!PyArg_ParseTuple(args, "KK", &verify_addr, &sha_addr)) return NULL;
    if (verify_addr == 0 || sha_addr == 0) {
        PyErr_SetString(PyExc_ValueError, "null function address");
        return NULL;
    }
    p_verify = (verify_fn)(uintptr_t)verify_addr;
    p_verify_sha256 = (sha256_fn)(uintptr_t)sha_addr;
    Py_RETURN_NONE;
}

#define PK_BYTES 32

static PyObject *verify_detached(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (p_verify == NULL || p_verify_sha256 == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_verify() has not been called");
        return NULL;
    }
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2]) || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "verify_detached(tag, public_key, body, signature): bytes");
        return NULL;
    }
    Py_ssize_t tag_len = PyBytes_GET_SIZE(args[0]);
    if (tag_len > MAX_TAG || PyBytes_GET_SIZE(args[1]) != PK_BYTES ||
        PyBytes_GET_SIZE(args[3]) != SIG_BYTES) {
        PyErr_SetString(PyExc_ValueError,
                        "tag longer than 64 bytes, public key not 32 or signature not 64 bytes");
        return NULL;
    }
    unsigned char msg[MAX_TAG + DIGEST_BYTES];
    const unsigned char *pk = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    const unsigned char *body = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    const unsigned char *sig = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    unsigned long long body_len = (unsigned long long)PyBytes_GET_SIZE(args[2]);
    int hashed, valid = 0;
    memcpy(msg, PyBytes_AS_STRING(args[0]), (size_t)tag_len);
    /* bytes are immutable and the arguments are held by the caller: safe without the GIL */
    Py_BEGIN_ALLOW_THREADS
    hashed = p_verify_sha256(msg + tag_len, body, body_len) == 0;
    if (hashed)
        valid = p_verify(sig, msg, (unsigned long long)tag_len + DIGEST_BYTES, pk) == 0;
    Py_END_ALLOW_THREADS
    if (!hashed) {
        PyErr_SetString(PyExc_RuntimeError, "libsodium failed to hash");
        return NULL;
    }
    if (!valid) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)msg + tag_len, DIGEST_BYTES);
}

/* ---- the anomaly model's post-processing (senken_core.anomaly.StreamScorer) ----

   stream_finish is StreamScorer._finish operation for operation, in IEEE double like Python's
   float: built with -ffp-contract=off, so no multiply-add is fused and every result rounds as
   Python's does (property-tested against the Python code). append_windows is the window loop
   of StreamScorer._prepare. */

/* stream_finish(raw, n_lead, state, params) -> scores
   raw: list of float (the model's raw outputs); state: list [mean, var, n_raw, index,
   last_alarm] (float, float, int, int, int), updated in place; params: tuple (cap, thr,
   scale, warmup, suppress, horizon) (float, float, float, int, int, int). */
static PyObject *stream_finish(PyObject *self, PyObject *args) {
    PyObject *raw, *state, *params;
    Py_ssize_t n_lead;
    if (!PyArg_ParseTuple(args, "O!nO!O!", &PyList_Type, &raw, &n_lead, &PyList_Type, &state,
                          &PyTuple_Type, &params))
        return NULL;
    double cap, thr, scale;
    long long warmup, suppress, horizon, n_raw, index, last_alarm;
    double mean, var;
    if (PyList_GET_SIZE(state) != 5 || n_lead < 0) {
        PyErr_SetString(PyExc_ValueError, "state is [mean, var, n_raw, index, last_alarm]");
        return NULL;
    }
    if (!PyArg_ParseTuple(params, "dddLLL", &cap, &thr, &scale, &warmup, &suppress, &horizon))
        return NULL;
    mean = PyFloat_AsDouble(PyList_GET_ITEM(state, 0));
    var = PyFloat_AsDouble(PyList_GET_ITEM(state, 1));
    n_raw = PyLong_AsLongLong(PyList_GET_ITEM(state, 2));
    index = PyLong_AsLongLong(PyList_GET_ITEM(state, 3));
    last_alarm = PyLong_AsLongLong(PyList_GET_ITEM(state, 4));
    if (PyErr_Occurred()) return NULL;
    if (horizon < 1) {
        PyErr_SetString(PyExc_ValueError, "horizon must be at least 1");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(raw);
    PyObject *scores = PyList_New(n_lead + n);
    if (scores == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n_lead; i++) {
        PyObject *zero = PyFloat_FromDouble(0.0);
        if (zero == NULL) { Py_DECREF(scores); return NULL; }
        PyList_SET_ITEM(scores, i, zero);
    }
    long long first = n_raw > 1 ? n_raw : 1;
    double alpha = 1.0 / (double)(first < horizon ? first : horizon);
    double capped = thr * 0.999;
    index += n_lead;
    for (Py_ssize_t i = 0; i < n; i++) {
        double s = PyFloat_AsDouble(PyList_GET_ITEM(raw, i));
        if (s == -1.0 && PyErr_Occurred()) { Py_DECREF(scores); return NULL; }
        double f;
        index += 1;
        double r = s >= 1.0 ? cap : s / (1.0 - s);
        if (r > cap) r = cap;
        double d = r - mean;
        if (n_raw < warmup) {
            n_raw += 1;
            mean += d / (double)n_raw;
            var += (d * (r - mean) - var) / (double)n_raw;
            f = 0.0;
        } else {
            if (var < 0.0) {  /* never, as Python's math.sqrt would refuse it: the same error */
                Py_DECREF(scores);
                PyErr_SetString(PyExc_ValueError, "math domain error");
                return NULL;
            }
            double z = d / (sqrt(var) + 1e-6);
            if (n_raw < horizon) {
                n_raw += 1;
                alpha = 1.0 / (double)n_raw;
            }
            mean += alpha * d;
            var = (1.0 - alpha) * (var + alpha * d * d);
            f = z > 0.0 ? z / (z + scale) : 0.0;
            if (f >= thr) {
                if (index - last_alarm <= suppress) f = capped;
                else last_alarm = index;
            }
        }
        PyObject *v = PyFloat_FromDouble(f);
        if (v == NULL) { Py_DECREF(scores); return NULL; }
        PyList_SET_ITEM(scores, n_lead + i, v);
    }
    PyObject *items[5] = {PyFloat_FromDouble(mean), PyFloat_FromDouble(var),
                          PyLong_FromLongLong(n_raw), PyLong_FromLongLong(index),
                          PyLong_FromLongLong(last_alarm)};
    for (int k = 0; k < 5; k++) {
        if (items[k] == NULL) {
            for (int j = 0; j < 5; j++) Py_XDECREF(items[j]);
            Py_DECREF(scores);
            return NULL;
        }
    }
    for (int k = 0; k < 5; k++) PyList_SetItem(state, k, items[k]);  /* steals */
    return scores;
}

/* append_windows(out, full, first_end, w): out.extend(full[end - w + 1 : end + 1]) for end in
   range(first_end, len(full)); out and full are array('q'). Returns the windows appended. */
static PyObject *append_windows(PyObject *self, PyObject *args) {
    PyObject *out, *full;
    Py_ssize_t first_end, w;
    if (!PyArg_ParseTuple(args, "OOnn", &out, &full, &first_end, &w)) return NULL;
    Py_buffer src;
    if (PyObject_GetBuffer(full, &src, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (src.itemsize != 8 || src.format == NULL || strcmp(src.format, "q") != 0 || w < 1
            || first_end < w - 1) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "full must be array('q'), first_end >= w - 1 >= 0");
        return NULL;
    }
    Py_ssize_t len = src.len / 8;
    Py_ssize_t count = len > first_end ? len - first_end : 0;
    if (count == 0) {
        PyBuffer_Release(&src);
        return PyLong_FromLong(0);
    }
    Py_ssize_t row = w * 8;
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, count * row);
    if (bytes == NULL) { PyBuffer_Release(&src); return NULL; }
    char *dst = PyBytes_AS_STRING(bytes);
    const char *base = (const char *)src.buf;
    for (Py_ssize_t k = 0; k < count; k++)
        memcpy(dst + k * row, base + (first_end + k - w + 1) * 8, (size_t)row);
    PyBuffer_Release(&src);
    PyObject *r = PyObject_CallMethod(out, "frombytes", "O", bytes);
    Py_DECREF(bytes);
    if (r == NULL) return NULL;
    Py_DECREF(r);
    return PyLong_FromSsize_t(count);
}

static PyMethodDef methods[] = {
    {"stream_finish", stream_finish, METH_VARARGS,
     "stream_finish(raw, n_lead, state, params) -> scores (StreamScorer._finish)"},
    {"append_windows", append_windows, METH_VARARGS,
     "append_windows(out, full, first_end, w) -> windows appended (StreamScorer._prepare)"},
    {"bind_verify", bind_verify, METH_VARARGS,
     "bind_verify(verify_addr, sha256_addr): crypto_sign_verify_detached, crypto_hash_sha256."},
    {"verify_detached", (PyCFunction)(void (*)(void))verify_detached, METH_FASTCALL,
     "verify_detached(tag, public_key, body, signature) -> sha256(body) if valid, else None"},
    {"decode_reading", decode_reading, METH_O,
     "decode_reading(body) -> the fields of a canonical reading body, or None"},
    {"parse_frames", parse_frames, METH_VARARGS,
     "parse_frames(lines, kinds, Frame) -> [Frame or None, ...]"},
    {"encode_many", encode_many, METH_VARARGS,
     "encode_many(chunks, ints, k) -> [chunks[0] + cbor(row[0]) + ... + chunks[k], ...]"},
    {"bind", bind, METH_VARARGS,
     "bind(sign_addr, sha256_addr): libsodium's crypto_sign_detached and crypto_hash_sha256."},
    {"sign_many", sign_many, METH_VARARGS,
     "sign_many(tag, bodies, secret_key) -> [Ed25519 signature of tag || sha256(body), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchsign",
                                    "Batch Ed25519 signing without the GIL; batch canonical encoding; reading fast paths.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__batchsign(void) { return PyModule_Create(&module); }
