/* The gateway's quick response-head parse in C (microkit/gateway/upstream.py, `quick_head`).

   parse(data) -> None, or (status, reason, block, length, keep_alive, has_date, has_vary, body_start)
   for the same heads as the pure-Python `_quick_head` and with the same results: an HTTP/1.1 status
   200-599 with a reason, header lines of token names and values of visible characters, spaces, tabs
   and bytes >= 0x80 ending in CRLF, exactly one all-digit Content-Length, no Transfer-Encoding, a
   Connection of keep-alive or close only. `block` is the header lines the relay passes on, as
   received: all but the hop-by-hop ones and X-Request-Id. None leaves the head to httptools. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <strings.h>

static unsigned char token_char[256];

static void init_tables(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) token_char[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) token_char[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) token_char[c] = 1;
    for (const char *p = extra; *p; p++) token_char[(unsigned char)*p] = 1;
}

static int value_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static int named(const char *name, Py_ssize_t len, const char *lower) {
    return (Py_ssize_t)strlen(lower) == len && strncasecmp(name, lower, (size_t)len) == 0;
}

/* what a header means to the relay */
enum { PLAIN, LENGTH, DATE, VARY, CONNECTION, DROP, FRAMING };

static int kind_of(const char *name, Py_ssize_t len) {
    if (named(name, len, "content-length")) return LENGTH;
    if (named(name, len, "date")) return DATE;
    if (named(name, len, "vary")) return VARY;
    if (named(name, len, "connection")) return CONNECTION;
    if (named(name, len, "transfer-encoding")) return FRAMING;
    if (named(name, len, "keep-alive") || named(name, len, "te") || named(name, len, "trailer")
        || named(name, len, "upgrade") || named(name, len, "x-request-id")) return DROP;
    if (len >= 6 && strncasecmp(name, "proxy-", 6) == 0) return DROP;
    return PLAIN;
}

static void strip(const char **start, const char **end) {
    while (*start < *end && (**start == ' ' || **start == '\t')) (*start)++;
    while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t')) (*end)--;
}

static PyObject *parse(PyObject *module, PyObject *arg) {
    (void)module;
    char *data;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(arg, &data, &size) < 0) return NULL;
    const char *stop = NULL;
    for (Py_ssize_t i = 0; i + 3 < size; i++) {
        if (data[i] == '\r' && data[i + 1] == '\n' && data[i + 2] == '\r' && data[i + 3] == '\n') {
            stop = data + i + 2;  /* the head, through its last line's CRLF */
            break;
        }
    }
    if (stop == NULL || stop - data < 17 || memcmp(data, "HTTP/1.1 ", 9) != 0) Py_RETURN_NONE;
    if (data[9] < '2' || data[9] > '5' || data[10] < '0' || data[10] > '9' || data[11] < '0' || data[11] > '9'
        || data[12] != ' ') Py_RETURN_NONE;
    int status = (data[9] - '0') * 100 + (data[10] - '0') * 10 + (data[11] - '0');
    const char *p = data + 13, *reason = p;
    while (p < stop && *p >= 0x20 && *p < 0x7f) p++;
    if (p == reason || p + 1 >= stop || p[0] != '\r' || p[1] != '\n' || reason[0] == ' ' || p[-1] == ' ')
        Py_RETURN_NONE;
    Py_ssize_t reason_len = p - reason;
    p += 2;
    char *block = PyMem_Malloc((size_t)(stop - p) + 1);
    if (block == NULL) return PyErr_NoMemory();
    Py_ssize_t kept = 0;
    const char *length = NULL, *length_end = NULL;
    int keep_alive = 1, has_date = 0, has_vary = 0, ok = 1;
    while (ok && p < stop) {
        const char *line = p, *name_end;
        while (p < stop && token_char[(unsigned char)*p]) p++;
        if (p == line || p >= stop || *p != ':') { ok = 0; break; }
        name_end = p++;
        const char *value = p;
        while (p < stop && value_char((unsigned char)*p)) p++;
        if (p + 1 >= stop || p[0] != '\r' || p[1] != '\n') { ok = 0; break; }
        const char *value_end = p;
        p += 2;
        strip(&value, &value_end);
        switch (kind_of(line, name_end - line)) {
        case LENGTH:
            if (length != NULL || value == value_end) { ok = 0; break; }
            for (const char *d = value; d < value_end; d++) if (*d < '0' || *d > '9') ok = 0;
            length = value;
            length_end = value_end;
            goto keep;
        case DATE:
            has_date = 1;
            goto keep;
        case VARY:
            has_vary = 1;
            goto keep;
        case CONNECTION:
            if (value_end - value == 5 && strncasecmp(value, "close", 5) == 0) keep_alive = 0;
            else if (!(value_end - value == 10 && strncasecmp(value, "keep-alive", 10) == 0)) ok = 0;
            break;
        case FRAMING:
            ok = 0;
            break;
        case DROP:
            break;
        default:
        keep:
            memcpy(block + kept, line, (size_t)(p - line));
            kept += p - line;
        }
    }
    if (!ok || length == NULL) {
        PyMem_Free(block);
        Py_RETURN_NONE;
    }
    PyObject *result = Py_BuildValue("(iy#y#y#NNNn)", status, reason, reason_len, block, kept, length,
                                     length_end - length, PyBool_FromLong(keep_alive), PyBool_FromLong(has_date),
                                     PyBool_FromLong(has_vary), (Py_ssize_t)(stop - data) + 2);
    PyMem_Free(block);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_O, "The quick parse of a response head: a tuple, or None for httptools."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_quickhead", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__quickhead(void) {
    init_tables();
    return PyModule_Create(&module);
}
