/* Sign many readings in one call, without holding the GIL; encode many reading bodies.

   Each signature is Ed25519 over tag || SHA-256(body), exactly as senken_core.keys.DeviceKey.sign
   makes it (docs/protocol.md). The primitives are libsodium's, taken from the copy PyNaCl ships:
   senken_core.keys passes the addresses of crypto_hash_sha256 and crypto_sign_detached to bind()
   once, so this file needs no libsodium headers and links against nothing.

   Why: a Python thread that signs one reading per call gives up the GIL for every signature and
   then waits to get it back while the serial thread parses; on two cores the two threads then
   run one after the other. One call per batch releases the GIL once for the whole batch. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
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

static PyMethodDef methods[] = {
    {"encode_many", encode_many, METH_VARARGS,
     "encode_many(chunks, ints, k) -> [chunks[0] + cbor(row[0]) + ... + chunks[k], ...]"},
    {"bind", bind, METH_VARARGS,
     "bind(sign_addr, sha256_addr): libsodium's crypto_sign_detached and crypto_hash_sha256."},
    {"sign_many", sign_many, METH_VARARGS,
     "sign_many(tag, bodies, secret_key) -> [Ed25519 signature of tag || sha256(body), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchsign",
                                    "Batch Ed25519 signing without the GIL; batch canonical encoding.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__batchsign(void) { return PyModule_Create(&module); }
